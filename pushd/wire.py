"""Each message encoded once per wire format, cached on the message.

Fan-out writes the same bytes to every subscriber of a format; nothing here
runs per subscriber. Formats ending in ``+chunk`` are the same bytes already
framed as one HTTP/1.1 chunk, so a streaming response can hand them straight
to its connection.

SSE follows the WHATWG EventSource parsing rules: every line of a payload
(split on CRLF, CR or LF) becomes its own ``data:`` line, so no payload can
start a field or an event, and the browser rebuilds it with LF line ends.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from pushd.model import DEFAULT_EVENT, Message

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_LINES = re.compile(r"\r\n|\r|\n")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the one JSON encoding pushd writes."""
    return _dumps(value).encode("utf-8")


def chunk(data: bytes) -> bytes:
    """Frame ``data`` as one HTTP/1.1 chunk (never pass empty bytes)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def payload_text(data: Any) -> str:
    """The text a browser sees as ``event.data`` for ``data`` published as
    text (a str) or JSON (anything else). A JSON string published as JSON
    is its JSON text instead (see :class:`~pushd.model.Payload`)."""
    return data if isinstance(data, str) else _dumps(data)


def _sse_data(text: str) -> bytes:
    return "".join(["data: " + line + "\n" for line in _LINES.split(text)]).encode()


def sse_frame(data_text: str, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event; ``event`` None or ``message`` adds no ``event:`` line."""
    head = ""
    if id is not None:
        head += "id: " + id + "\n"
    if event is not None and event != DEFAULT_EVENT:
        head += "event: " + event + "\n"
    return head.encode() + _sse_data(data_text) + b"\n"


_JSON = b'{"id":"%s","channel":"%s","event":"%s","data":%s,"time":%d}'
_JSON_FIXED = len(_JSON.replace(b"%s", b"").replace(b"%d", b""))


def _json(m: Message) -> bytes:
    # The payload's JSON was made once, before the message was stored:
    # spliced in here, never encoded again. Ids, channel and event names are
    # ASCII with nothing JSON would escape (pushd.model's rules).
    return _JSON % (m.id.encode(), m.channel.encode(), m.event.encode(), m.payload.json, m.time)


def _typed(m: Message) -> bytes:
    return b'{"type":"message",' + _json(m)[1:]


def _ndjson(m: Message) -> bytes:
    return encode(m, "typed") + b"\n"


def _sse(m: Message) -> bytes:
    payload = m.payload
    if payload.text is not None:  # text as itself, a data: line per line
        return sse_frame(payload.text, m.event, m.id)
    # A JSON value as its JSON text: one line, JSON escapes every line break.
    head = "id: " + m.id + "\n"
    if m.event != DEFAULT_EVENT:
        head += "event: " + m.event + "\n"
    return head.encode() + b"data: " + payload.json + b"\n\n"


def _sse_envelope(m: Message) -> bytes:
    return b"id: " + m.id.encode() + b"\ndata: " + encode(m, "json") + b"\n\n"


ENCODERS: dict[str, Callable[[Message], bytes]] = {
    "json": _json,  # the message object (poll, long-poll)
    "typed": _typed,  # {"type":"message",...}: a WebSocket text frame
    "ndjson": _ndjson,  # one line of an HTTP stream
    "sse": _sse,
    "sse-env": _sse_envelope,
}


def encode(message: Message, fmt: str) -> bytes:
    """The bytes of ``message`` in ``fmt``, computed on first use only."""
    cache = message.encoded
    try:
        return cache[fmt]  # type: ignore[no-any-return]
    except KeyError:
        pass
    if fmt.endswith("+chunk"):
        data = chunk(encode(message, fmt[:-6]))
    else:
        data = ENCODERS[fmt](message)
    cache[fmt] = data
    return data


# -- notices ---------------------------------------------------------------
def reset_object(channel: str, cursor: str | None) -> dict[str, Any]:
    return {"type": "reset", "channel": channel, "cursor": cursor}


def closed_object(channel: str) -> dict[str, Any]:
    return {"type": "closed", "channel": channel}


def sse_reset(channel: str, cursor: str | None) -> bytes:
    """``event: reset``; ``id:`` moves the browser's Last-Event-ID to ``cursor``."""
    body = dumps({"channel": channel, "cursor": cursor}).decode()
    return sse_frame(body, "reset", cursor)


def sse_closed(channel: str) -> bytes:
    return sse_frame(dumps({"channel": channel}).decode(), "closed")


def expired_object(channel: str) -> dict[str, Any]:
    return {"type": "expired", "channel": channel}


def sse_expired(channel: str) -> bytes:
    """The token behind the stream expired: come back with a fresh one."""
    return sse_frame(dumps({"channel": channel}).decode(), "expired")


def sse_retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def message_bytes(message: Message) -> int:
    """What ``message`` weighs against the byte bounds (``[poll] max_bytes``,
    ``[history] max_bytes``): its JSON object as a poll answer carries it.

    The one place a message's size is measured: the exact length of its
    ``json`` encoding, counted without making it (the history weighs every
    message, and most are never polled).
    """
    m = message
    return (
        _JSON_FIXED + len(m.id) + len(m.channel) + len(m.event) + len(m.payload.json)
        + len(str(m.time))
    )


_POLL_FRAME = len(b'{"messages":[],"cursor":}')


def fit_poll(messages: list[Message], max_bytes: int) -> list[Message]:
    """The longest head of ``messages`` whose :func:`poll_body` is at most
    ``max_bytes`` long, with its last message as the cursor; always at
    least one message, however large, so a client can never be stuck.

    An answer is built in memory before it is written, so without this one
    poll of ``limit`` large messages could hold many megabytes per client.
    """
    used = _POLL_FRAME - 1  # the first message has no comma before it
    for i, message in enumerate(messages):
        used += message_bytes(message) + 1
        if i and used + len(dumps(message.id)) > max_bytes:
            return messages[:i]
    return messages


def poll_page(
    messages: list[Message], cursor: str | None, max_bytes: int
) -> tuple[list[Message], str | None]:
    """A read's messages and cursor cut to ``max_bytes``: when messages are
    left out, the cursor is the last one included, so paging loses nothing."""
    fitted = fit_poll(messages, max_bytes)
    if len(fitted) < len(messages):
        return fitted, fitted[-1].id
    return messages, cursor


def poll_body(
    messages: list[Message],
    cursor: str | None,
    reset: bool = False,
    closed: bool = False,
    expired: bool = False,
) -> bytes:
    """``{"messages": [...], "cursor": ...}`` from each message's cached JSON."""
    out = b'{"messages":[' + b",".join([encode(m, "json") for m in messages])
    out += b'],"cursor":' + dumps(cursor)
    if reset:
        out += b',"reset":true'
    if closed:
        out += b',"closed":true'
    if expired:
        out += b',"expired":true'
    return out + b"}"
