"""Token buckets per key: ``[limits] publish_rate`` and ``connect_rate``.

Each key (a token's ``sub`` or a client address) has a bucket of ``burst``
tokens (the rate, at least 1) that refills at ``rate`` tokens a second. A
bucket is kept as one float, the time at which it is full again (the
"theoretical arrival time" of GCRA): taking ``n`` tokens moves it ``n / rate``
seconds later, and the reactor clock passed in refills it by moving on. So a
key costs one dict entry, no timer, and a request one lookup and a little
arithmetic.

A request that costs more than the burst (a large batch) is accepted when the
bucket is full and leaves it in debt: the average rate holds and a batch
larger than the burst is never refused forever.

A bucket that is full again is the same as none, so such keys are dropped:
each time the table has doubled since the last sweep it is swept. It holds
at most ``MAX_KEYS``; past that the oldest quarter goes (those keys start
anew, full): a flood from that many addresses is beyond a per-key limit.
"""

from __future__ import annotations

from math import ceil

from twisted.internet.interfaces import IReactorTime

from pushd.errors import PushdError

SWEEP_MIN = 1024  # keys before the first sweep
MAX_KEYS = 100_000  # keys kept at most, whatever the sweeps leave
_EPSILON = 1e-9  # float rounding: n takes of 1/rate add up to a hair over n/rate


class RateLimited(PushdError):
    """``429 rate_limited`` with the whole seconds to wait (``Retry-After``)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(429, "rate_limited", message)
        self.retry_after = retry_after


class Buckets:
    """One token bucket per key, refilled on ``clock``."""

    def __init__(self, rate: float, clock: IReactorTime, max_keys: int = MAX_KEYS) -> None:
        if rate <= 0:
            raise ValueError("a rate must be more than 0")
        self.rate = rate
        self.burst = max(1.0, float(rate))
        self.interval = 1.0 / rate  # seconds one token takes to come back
        self.clock = clock
        self.max_keys = max_keys
        self.full_at: dict[str, float] = {}  # key -> when its bucket is full again
        self._sweep_at = min(SWEEP_MIN, max_keys)

    def take(self, key: str, cost: int = 1) -> int:
        """Take ``cost`` tokens from ``key``'s bucket: 0 when taken, else the
        whole seconds (at least 1) until they would be, and nothing is taken."""
        now = self.clock.seconds()
        full_at = self.full_at
        due = full_at.get(key)
        if due is None or due < now:
            due = now
        need = cost if cost < self.burst else self.burst
        # the tokens in the bucket, burst - (due - now) * rate, must be >= need
        wait = (due - now) - (self.burst - need) * self.interval
        if wait > _EPSILON:
            return max(1, ceil(wait - _EPSILON))
        if key not in full_at and len(full_at) >= self._sweep_at:
            self._sweep(now)
        full_at[key] = due + cost * self.interval
        return 0

    def _sweep(self, now: float) -> None:
        """Drop the keys whose bucket is full again (the same as having none)."""
        full_at = self.full_at
        for key in [k for k, due in full_at.items() if due <= now]:
            del full_at[key]
        if len(full_at) >= self.max_keys:  # all busy: the oldest quarter starts anew
            for key in list(full_at)[: len(full_at) - self.max_keys * 3 // 4]:
                del full_at[key]
        self._sweep_at = min(self.max_keys, max(SWEEP_MIN, 2 * len(full_at)))


class PublishRates:
    """``[limits] publish_rate``: a bucket per token ``sub``, else per client
    address. Two tables, so a subject never shares a bucket with an address
    that happens to be spelled the same."""

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        self.by_sub = Buckets(rate, clock)
        self.by_address = Buckets(rate, clock)

    def check(self, sub: str | None, address: str, cost: int) -> None:
        """Take ``cost`` publishes from the publisher's bucket, or raise
        :class:`RateLimited`."""
        if sub is not None:
            wait = self.by_sub.take(sub, cost)
        else:
            wait = self.by_address.take(address, cost)
        if wait:
            raise RateLimited(
                f"more than {self.by_sub.rate:g} publishes a second ([limits] publish_rate); "
                f"retry in {wait} s",
                wait,
            )
