"""What every source shares: config checking, counters, publishing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.errors import PushdError
from pushd.model import CHANNEL_RE, Message, Payload, parse_json, text_payload


class Settings:
    """Typed access to one ``[[source]]`` table, with errors that name the key.

    Every key a source reads is recorded; :meth:`done` then refuses the rest,
    so a misspelt option stops the daemon instead of being ignored.
    """

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.kind = str(table.get("type"))
        self._read = {"type"}

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self._read.add(key)
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"[[source]] {self.kind}: {key} is required")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and bool not in _tuple(kind)
        )
        if not ok:
            raise ConfigError(
                f"[[source]] {self.kind}: {key} has the wrong type: {value!r}"
            )
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.get(key, (int, float), default))
        if value < minimum:
            raise ConfigError(f"[[source]] {self.kind}: {key} must be at least {minimum}")
        return value

    def channel(self, key: str = "channel", default: Any = ...) -> str:
        value = self.get(key, str, default)
        if not CHANNEL_RE.match(value):
            raise ConfigError(
                f"[[source]] {self.kind}: {key} {value!r} is not a valid channel name"
            )
        return str(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(
                f"[[source]] {self.kind}: {key} must be one of {', '.join(choices)}, not {value!r}"
            )
        return str(value)

    def strings(self, key: str, default: Any = ...) -> list[str]:
        """A list of strings (argv, Redis channels...)."""
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[[source]] {self.kind}: {key} must be a list of strings")
        return list(value)

    def string_table(self, key: str) -> dict[str, str]:
        """A TOML table of string values (headers, env, channel_map); {} if absent."""
        value = self.get(key, dict, {})
        for k, v in value.items():
            if not isinstance(v, str):
                raise ConfigError(f"[[source]] {self.kind}: {key}.{k} must be a string")
        return dict(value)

    def backoff(self, clock: IReactorTime) -> Backoff:
        """The restart delays every restarting source accepts, with their defaults."""
        initial = self.number("backoff_initial", 1.0)
        maximum = self.number("backoff_max", 30.0)
        healthy = self.number("backoff_reset", 10.0)
        if initial <= 0:
            raise ConfigError(f"[[source]] {self.kind}: backoff_initial must be more than 0")
        if maximum < initial:
            raise ConfigError(
                f"[[source]] {self.kind}: backoff_max must be at least backoff_initial"
            )
        return Backoff(clock, initial, maximum, healthy)

    def done(self) -> None:
        extra = sorted(set(self.table) - self._read)
        if extra:
            raise ConfigError(f"[[source]] {self.kind}: unknown setting {extra[0]!r}")


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class Source(Service):
    """A service that publishes to the broker and counts what happened.

    ``published``, ``errors`` and ``restarts`` are read by the metrics
    exporter; a source only increments them.
    """

    log = Logger()

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.setName(name)
        self.published = 0
        self.errors = 0
        self.restarts = 0

    def publish(
        self, channel: str, data: Payload | Any, event: str = "message"
    ) -> Deferred[Message]:
        """Publish ``data``: a Payload, or a str (text) or other value (JSON).

        A value no transport could encode (NaN, say) is refused by the broker
        and counted in ``errors`` like any failed publish.
        """
        d = self.broker.publish(channel, data, event)
        d.addCallbacks(self._published, self._failed, errbackArgs=(channel,))
        return d

    def _published(self, message: Message) -> Message:
        self.published += 1
        return message

    def _failed(self, failure: Any, channel: str) -> None:
        self.errors += 1
        self.log.warn(
            "source {source} could not publish to {channel}: {why}",
            source=self.name, channel=channel, why=failure.getErrorMessage(),
        )


class Periodic(Source):
    """A source whose work is a timer: :meth:`tick` every ``interval`` seconds.

    The ticker, the status source and the file follower share this, so the
    timer starts and stops with the service in one place. ``tick_at_start``
    says whether the first tick runs at start-up or one interval later.
    """

    tick_at_start = True

    def __init__(self, broker: Broker, name: str, clock: IReactorTime, interval: float) -> None:
        super().__init__(broker, name)
        self.clock = clock
        self.interval = interval
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def tick(self) -> None:
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=self.tick_at_start)

    def stopService(self) -> Deferred[None] | None:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()  # type: ignore[no-any-return]


def decode_line(
    source: Source, line: bytes, as_json: bool
) -> tuple[bool, Payload | None]:
    """Turn one line of a program, file or stream into a message's payload.

    Returns ``(True, payload)``: the line as text, or with ``as_json`` its
    JSON value (a JSON string stays JSON, ``"007"`` is not the text ``007``).
    Or ``(False, None)`` after logging and counting an error: a bad line is
    skipped, never fatal, so one garbled write does not stop a feed.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        source.errors += 1
        source.log.warn("source {source}: skipped a line that is not UTF-8", source=source.name)
        return False, None
    try:
        return True, parse_json(text) if as_json else text_payload(text)
    except PushdError as e:
        source.errors += 1
        source.log.warn(
            "source {source}: skipped a line that is not JSON ({why}): {line!r}",
            source=source.name, why=e.message, line=text[:200],
        )
        return False, None


class LineBuffer:
    """Splits a byte stream into lines (LF or CRLF), keeping the unfinished tail.

    Lines longer than ``limit`` bytes are dropped (``overflowed`` counts
    them) so a producer that never writes a newline cannot grow memory.
    """

    def __init__(self, limit: int = 1024 * 1024) -> None:
        self.limit = limit
        self.tail = b""
        self.overflowed = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        out = []
        for line in lines:
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self.limit:
                self.overflowed += 1
                continue
            out.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self.tail) > self.limit:
            if not self._skipping:
                self.overflowed += 1
            self.tail = b""
            self._skipping = True
        return out

    def flush(self) -> bytes | None:
        """The unfinished last line, if any (at end of input), and forget it."""
        tail, self.tail = self.tail, b""
        skipping, self._skipping = self._skipping, False
        if not tail or skipping:
            return None
        return tail[:-1] if tail.endswith(b"\r") else tail


class Backoff:
    """Restart delays: ``initial``, doubled after each failure, capped at ``maximum``.

    A run that lasted at least ``healthy`` seconds counts as a success, so
    the next delay starts again from ``initial``: a source that fails once a
    day restarts quickly, one that fails at once backs off. Time comes from
    ``clock`` so tests drive it with ``task.Clock``.
    """

    def __init__(
        self, clock: IReactorTime, initial: float = 1.0, maximum: float = 30.0,
        healthy: float = 10.0,
    ) -> None:
        self.clock = clock
        self.initial = initial
        self.maximum = maximum
        self.healthy = healthy
        self.failures = 0
        self._started: float | None = None

    def started(self) -> None:
        """Call when a run begins (a process spawned, a connection attempted)."""
        self._started = self.clock.seconds()

    def next_delay(self) -> float:
        """Call when a run ended: the seconds to wait before the next one."""
        if self._started is not None and self.clock.seconds() - self._started >= self.healthy:
            self.failures = 0
        self._started = None
        delay = min(self.initial * 2 ** min(self.failures, 64), self.maximum)
        self.failures += 1
        return float(delay)


class Restarting(Source):
    """A source whose work is a *session* restarted with backoff when it ends.

    Subclasses implement :meth:`run` (start one session: spawn, connect...;
    return a Deferred that fires, or fails, when the session is over) and
    :meth:`halt` (end the current session now). They call :meth:`connected`
    once a session is really up. Everything else (logging, counting
    restarts, the retry timer, a clean stop) lives here, once.
    """

    def __init__(self, broker: Broker, name: str, clock: IReactorTime, backoff: Backoff) -> None:
        super().__init__(broker, name)
        self.clock = clock
        self.backoff = backoff
        self._retry: IDelayedCall | None = None
        self._session: Deferred[Any] | None = None
        self._on_connected: list[Deferred[None]] = []
        self._on_ended: list[Deferred[None]] = []

    # -- for subclasses ---------------------------------------------------
    def run(self) -> Deferred[Any]:
        raise NotImplementedError

    def halt(self) -> None:
        raise NotImplementedError

    def connected(self, what: str) -> None:
        """Log that a session is up and wake :meth:`when_connected` waiters."""
        self.log.info("source {source}: {what}", source=self.name, what=what)
        waiters, self._on_connected = self._on_connected, []
        for d in waiters:
            d.callback(None)

    # -- for tests and operations -------------------------------------------
    def when_connected(self) -> Deferred[None]:
        """Fires the next time a session comes up."""
        d: Deferred[None] = Deferred()
        self._on_connected.append(d)
        return d

    def when_ended(self) -> Deferred[None]:
        """Fires the next time a session ends (after any retry is scheduled)."""
        d: Deferred[None] = Deferred()
        self._on_ended.append(d)
        return d

    # -- the cycle ----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._start()

    def _start(self) -> None:
        self._retry = None
        self.backoff.started()
        try:
            session = self.run()
        except Exception:
            session = Deferred()
            session.errback(Failure())
        self._session = session
        session.addBoth(self._ended)

    def _ended(self, result: Any) -> None:
        self._session = None
        if not self.running:
            self.log.info("source {source} stopped", source=self.name)
        elif isinstance(result, Failure):
            self.errors += 1
            self.log.warn(
                "source {source} failed: {why}", source=self.name, why=result.getErrorMessage()
            )
        else:
            self.log.info("source {source} ended: {why}", source=self.name, why=result)
        if self.running:
            delay = self.backoff.next_delay()
            self.restarts += 1
            self.log.info(
                "source {source} retrying in {delay:.2f}s", source=self.name, delay=delay
            )
            self._retry = self.clock.callLater(delay, self._start)
        waiters, self._on_ended = self._on_ended, []
        for d in waiters:
            d.callback(None)

    def stopService(self) -> Deferred[None]:
        """Cancel any pending retry and end the session; fires when it is over."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._session is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._session.addBoth(lambda _: done.callback(None))
        self.halt()
        return done


Factory = Callable[[dict[str, Any], Broker, Any], Source]
