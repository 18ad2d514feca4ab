"""How many subscribers a channel has on every live node (DESIGN "Many processes").

``GET /channels/{ch}`` on Redis answers ``subscribers`` as the sum over the
live nodes, at most a few seconds old. Subscribers are local to a node (its
connections), so each node tells Redis its own counts:

- every ``interval`` seconds a node writes the counts that changed since its
  last report into one small hash per channel, ``<prefix>{ch}:n`` (field: the
  node's id, value: its count; the ``{ch}`` hash tag keeps it beside the
  channel's other keys), and every ``refresh``-th report all of them, which
  also renews the hash's expiry: a hash no node refreshes goes away;
- with each report it renews its liveness key ``<prefix>node:<id>``, which
  expires after a few intervals: a node that died (SIGKILL, a lost host)
  stops counting within seconds, though its fields stay until the hash
  expires;
- a reader sums its own live count and the fields of the other nodes whose
  liveness key exists.

Nothing of this is on a hot path: a report is one pipelined write of the
changed channels, and the sum is asked only by ``GET /channels/{ch}``.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pushd.broker.hub import Hub
from pushd.broker.resp import Link

log = Logger()


class Census:
    """This node's subscriber counts, told to Redis; the other nodes', read."""

    def __init__(
        self,
        link: Link,
        hub: Hub,
        clock: IReactorTime,
        prefix: str,
        node: str | None = None,
        interval: float = 2.0,
        refresh: int = 15,
    ) -> None:
        self.link = link
        self.hub = hub
        self.prefix = prefix
        self.node = node or secrets.token_hex(6)
        self.interval = interval
        self.refresh = refresh
        # a node is counted for this long after its last report
        self.alive_ms = int(interval * 3 * 1000)
        # a channel's hash outlives the last full report of any node this long
        self.keep_ms = int(interval * refresh * 3 * 1000)
        self._reported: dict[str, int] = {}
        self._reports = 0
        self._full = True  # the next report writes every count (first, or after a failure)
        self._loop = LoopingCall(self.report)
        self._loop.clock = clock

    def key(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:n"

    def alive_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> Deferred[None]:
        """Stop reporting, and take this node's counts back; fires once Redis
        has them (or could not: such a node is not counted once its liveness
        key expires). Never fails."""
        if self._loop.running:
            self._loop.stop()
        reported, self._reported = self._reported, {}
        if not self.link.up:
            return Deferred.fromCoroutine(_nothing())
        commands: list[tuple[Any, ...]] = [("DEL", self.alive_key(self.node))]
        commands += [("HDEL", self.key(ch), self.node) for ch in reported]
        done = gatherResults(self.link.pipeline(commands, wait=False), consumeErrors=True)
        return done.addBoth(lambda _: None)

    def report(self) -> Deferred[None]:
        """Tell Redis this node is alive and what changed; fires when written
        (never fails: a failed report is written whole next time)."""
        if not self.link.up:
            self._full = True  # Redis may come back empty: write everything then
            return Deferred.fromCoroutine(_nothing())
        full = self._full or self._reports % self.refresh == 0
        self._reports += 1
        self._full = False
        hub = self.hub
        counts = {channel: hub.count(channel) for channel in hub.channels()}
        reported = self._reported
        commands: list[tuple[Any, ...]] = [
            ("SET", self.alive_key(self.node), b"1", "PX", self.alive_ms)
        ]
        for channel, n in counts.items():
            if full or reported.get(channel) != n:
                key = self.key(channel)
                commands.append(("HSET", key, self.node, n))
                commands.append(("PEXPIRE", key, self.keep_ms))
        commands += [("HDEL", self.key(ch), self.node) for ch in reported if ch not in counts]
        self._reported = counts
        written = gatherResults(self.link.pipeline(commands, wait=False), consumeErrors=True)
        return written.addCallbacks(lambda _: None, self._failed)

    def _failed(self, failure: Any) -> None:
        self._full = True
        log.debug("census report failed: {f}", f=failure.value)

    async def others(self, channel: str) -> int:
        """The subscribers of ``channel`` on the other live nodes, as they
        last reported them."""
        reply = await self.link.execute("HGETALL", self.key(channel))
        counts = {
            reply[i].decode(): int(reply[i + 1])
            for i in range(0, len(reply), 2)
            if reply[i].decode() != self.node
        }
        if not counts:
            return 0
        alive = await self.link.execute("MGET", *[self.alive_key(n) for n in counts])
        return sum(n for n, up in zip(counts.values(), alive, strict=True) if up is not None)


async def _nothing() -> None:
    return None
