"""Messages, channel and event names, and how message bodies are read.

These rules are the wire contract's vocabulary; every transport and every
source goes through them, so a name or body that is valid in one place is
valid everywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pushd.errors import PushdError, bad_request

CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}\Z")
EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
RESERVED_EVENTS = frozenset({"reset", "closed"})
DEFAULT_EVENT = "message"


def check_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise a 400."""
    if not isinstance(name, str) or not CHANNEL_RE.match(name):
        raise bad_request(
            "bad_channel",
            "channel names are 1-128 characters of A-Z a-z 0-9 _ . : @ -",
        )
    return name


def check_event(name: object) -> str:
    """Return a publishable event name (default ``message``), else raise a 400."""
    if name is None:
        return DEFAULT_EVENT
    if not isinstance(name, str) or not EVENT_RE.match(name):
        raise bad_request("bad_event", "event names are 1-64 characters of A-Z a-z 0-9 _ . : -")
    if name in RESERVED_EVENTS:
        raise bad_request("reserved_event", f"event {name!r} is reserved for pushd")
    return name


def parse_body(body: bytes, content_type: str | None) -> Any:
    """Turn a published body into message data.

    ``application/json`` (and ``+json``) bodies are kept as JSON values so
    subscribers get structure, not a string of JSON; anything else must be
    UTF-8 text. Both checks happen before anything is stored, so bad input
    changes nothing.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("bad_utf8", "the body is not valid UTF-8") from None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return loads_json(text)
    return text


def loads_json(text: str) -> Any:
    """Parse JSON from a client, refusing what we could not send back out.

    ``json.loads`` accepts escaped lone surrogates (``"\\ud800"``), which
    cannot be encoded as UTF-8; refusing them here keeps every encoder total.
    """
    try:
        value = json.loads(text)
    except ValueError as e:
        raise bad_request("bad_json", f"not valid JSON: {e}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("bad_json", "JSON holds a lone surrogate") from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Message:
    """One published message, immutable once the broker has assigned its id.

    ``encoded`` caches each wire format's bytes (see :mod:`pushd.wire`), so a
    message is encoded once per format however many subscribers it reaches.
    """

    __slots__ = ("channel", "data", "encoded", "event", "id", "seq", "time")

    def __init__(self, id: str, seq: int, channel: str, event: str, data: Any, time: int) -> None:
        self.id = id
        self.seq = seq
        self.channel = channel
        self.event = event
        self.data = data
        self.time = time
        self.encoded: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        """The message object of the wire contract."""
        return {
            "id": self.id,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "time": self.time,
        }

    def __repr__(self) -> str:
        return f"<Message {self.channel}#{self.id} {self.event}>"


def too_large(limit: int) -> PushdError:
    return PushdError(413, "too_large", f"the body is larger than {limit} bytes")
