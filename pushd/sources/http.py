"""``http``: relay another service's streaming HTTP response into a channel.

One GET, read as it arrives, each item published:

- ``format = "ndjson"``: each non-empty line is a JSON value;
- ``format = "lines"``: each non-empty line is a text message;
- ``format = "sse"``: a ``text/event-stream`` parsed as the WHATWG spec says
  (``data:`` lines joined by newlines, ``event:``, ``id:``, ``retry:``,
  comments, CR/LF/CRLF line ends). Each event becomes a message with its event
  name kept (reserved or invalid names fall back to ``message``); its data is
  text, or JSON with ``data = "json"``.

When the response ends or fails, or nothing arrives for ``timeout`` seconds,
the source reconnects with backoff; an SSE upstream is asked to resume with
``Last-Event-ID``, the id of the last event seen, so nothing is relayed twice.
Bad items are logged, counted in ``errors`` and skipped; nothing is fatal.
"""

from __future__ import annotations

import codecs
import re
from typing import Any
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.errors import PushdError
from pushd.model import EVENT_RE, RESERVED_EVENTS, Payload, parse_json
from pushd.sources.base import Backoff, LineBuffer, Restarting, Settings, decode_line

_LINE_END = re.compile("\r\n|\r|\n")
_DIGITS = re.compile("[0-9]+")
MAX_EVENT = 1024 * 1024


class SSEParser:
    """An ``text/event-stream`` decoder that yields ``(event, data, id)``.

    ``last_event_id`` survives across connections (give the parser of the
    next connection the previous one's) exactly like an EventSource's.
    """

    def __init__(self, last_event_id: str = "", limit: int = MAX_EVENT) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self.limit = limit
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail = ""
        self._after_cr = False
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id = last_event_id
        self.overflowed = 0

    def feed(self, chunk: bytes) -> list[tuple[str, str, str]]:
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._first:
            self._first = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        buffered = self._tail + text
        self._after_cr = buffered.endswith("\r")
        lines = _LINE_END.split(buffered)
        self._tail = lines.pop()
        if len(self._tail) > self.limit:  # a line that never ends: drop the event
            self._tail = ""
            self._drop()
        events: list[tuple[str, str, str]] = []
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line: str, events: list[tuple[str, str, str]]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._size += len(value) + 1
            if self._size > self.limit:
                self._drop()
            else:
                self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if _DIGITS.fullmatch(value):
                self.retry = int(value)

    def _dispatch(self, events: list[tuple[str, str, str]]) -> None:
        self.last_event_id = self._id
        if self._data:
            events.append((self._event or "message", "\n".join(self._data), self._id))
        self._data = []
        self._event = ""
        self._size = 0

    def _drop(self) -> None:
        self.overflowed += 1
        self._data = []
        self._size = 0


class _Body(Protocol):
    """Feeds the response body to the source; ``done`` fires when it ends."""

    def __init__(self, source: HttpSource) -> None:
        self.source = source
        self.done: Deferred[str] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.source.received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback("the upstream ended its response")
        else:
            self.done.errback(reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class HttpSource(Restarting):
    """Publishes each item of the upstream response at ``url`` to ``channel``."""

    def __init__(
        self,
        broker: Broker,
        reactor: Any,
        channel: str,
        url: str,
        *,
        format: str = "ndjson",
        data_json: bool = False,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        backoff: Backoff | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """``reactor`` makes the connections; ``clock`` (default: the reactor)
        times backoff and the ``timeout`` on silence (0: wait forever)."""
        clock = clock or reactor
        super().__init__(broker, f"http:{channel}", clock, backoff or Backoff(clock))
        self.channel = channel
        self.url = url
        self.format = format
        self.data_json = data_json
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.last_event_id = ""
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, connectTimeout=timeout or None, pool=pool)
        self.http = HTTPClient(agent)
        self._request: Deferred[Any] | None = None
        self._body: _Body | None = None
        self._idle: IDelayedCall | None = None
        self._lines = LineBuffer()
        self._sse = SSEParser()

    # -- one session ------------------------------------------------------------
    def run(self) -> Deferred[str]:
        return Deferred.fromCoroutine(self._stream())

    async def _stream(self) -> str:
        headers = dict(self.headers)
        if self.format == "sse":
            headers.setdefault("Accept", "text/event-stream")
            headers.setdefault("Cache-Control", "no-cache")
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
        self._lines = LineBuffer()
        self._sse = SSEParser(self.last_event_id)
        self._request = self.http.get(self.url, headers=headers, unbuffered=True)
        if self.timeout:
            self._request.addTimeout(self.timeout, self.clock)
        try:
            response = await self._request
        finally:
            self._request = None
        body = self._body = _Body(self)
        response.deliverBody(body)
        try:
            if response.code != 200:
                body.done.addErrback(lambda _: None)  # the abort below is ours
                body.abort()
                raise UpstreamError(f"{self.url} answered {response.code}, not 200")
            kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
            if self.format == "sse" and not kind.startswith(b"text/event-stream"):
                self.log.warn("source {source}: {url} sent {kind!r}, not text/event-stream",
                              source=self.name, url=self.url, kind=kind.decode("latin-1"))
            self._arm_idle()
            self.connected(f"connected to {self.url}")  # last: waiters run at once
            result = await body.done
            if self.format != "sse":
                tail = self._lines.flush()
                if tail is not None:
                    self._item(tail)
            return result
        finally:
            self._body = None
            if self._idle is not None and self._idle.active():
                self._idle.cancel()
            self._idle = None

    def halt(self) -> None:
        if self._request is not None:
            self._request.cancel()
        elif self._body is not None:
            self._body.abort()

    # -- data ---------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.timeout)
        if self.format == "sse":
            events = self._sse.feed(data)
            self.errors += self._sse.overflowed
            self._sse.overflowed = 0
            for event, text, _ in events:
                self._event(event, text)
            # The resume point: ids seen so far, including on events without data.
            self.last_event_id = self._sse.last_event_id
        else:
            for line in self._lines.feed(data):
                if line.strip():
                    self._item(line)
            self.errors += self._lines.overflowed
            self._lines.overflowed = 0

    def _item(self, line: bytes) -> None:
        ok, value = decode_line(self, line, self.format == "ndjson")
        if ok:
            self.publish(self.channel, value)

    def _event(self, event: str, text: str) -> None:
        if event in RESERVED_EVENTS or not EVENT_RE.match(event):
            self.log.warn("source {source}: event name {event!r} cannot be published, "
                          "sent as 'message'", source=self.name, event=event[:80])
            event = "message"
        value: Payload | str = text
        if self.data_json:
            try:
                value = parse_json(text)
            except PushdError as e:
                self.errors += 1
                self.log.warn("source {source}: skipped an event whose data is not JSON: {why}",
                              source=self.name, why=e.message)
                return
        self.publish(self.channel, value, event)

    def _arm_idle(self) -> None:
        if self.timeout:
            self._idle = self.clock.callLater(self.timeout, self._silent)

    def _silent(self) -> None:
        self._idle = None
        self.log.warn("source {source}: nothing from {url} for {t}s, reconnecting",
                      source=self.name, url=self.url, t=self.timeout)
        if self._body is not None:
            self._body.abort()


class UpstreamError(Exception):
    """The upstream answered, but not with a stream we can relay."""


def from_config(table: dict[str, Any], broker: Broker, reactor: Any) -> HttpSource:
    s = Settings(table)
    channel = s.channel()
    url = s.get("url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"[[source]] http: url {url!r} must be an http:// or https:// URL")
    fmt = s.choice("format", ("ndjson", "lines", "sse"), "ndjson")
    data = s.choice("data", ("text", "json"), "text")
    if data == "json" and fmt != "sse":
        raise ConfigError("[[source]] http: data = \"json\" applies to format = \"sse\" only "
                          "(use format = \"ndjson\" for JSON lines)")
    headers = s.string_table("headers")
    timeout = s.number("timeout", 60.0)
    backoff = s.backoff(reactor)
    s.done()
    return HttpSource(
        broker, reactor, channel, url, format=fmt, data_json=data == "json",
        headers=headers, timeout=timeout, backoff=backoff,
    )
