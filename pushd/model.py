"""Messages, channel and event names, and how message bodies are read.

These rules are the wire contract's vocabulary; every transport and every
source goes through them, so a name or body that is valid in one place is
valid everywhere.
"""

from __future__ import annotations

import json
import json.encoder
import re
from typing import Any, Callable

from pushd.errors import PushdError, bad_request

CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}\Z")
EVENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
RESERVED_EVENTS = frozenset({"reset", "closed", "expired"})
IDEMPOTENCY_KEY_RE = re.compile(r"[\x20-\x7e]{1,128}\Z")  # 1-128 printable ASCII
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


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it can be an idempotency key, else raise a 400.

    Printable ASCII only, so a key is the same bytes in a header, in JSON and
    in Redis, and its size (which the brokers keep for the history TTL) is bounded.
    """
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key):
        raise bad_request(
            "bad_idempotency_key", "idempotency keys are 1-128 characters of printable ASCII"
        )
    return key


MAX_DEPTH = 64  # nested arrays/objects in any JSON pushd reads


def parse_body(body: bytes, content_type: str | None) -> Payload:
    """Turn a published body into a message's payload.

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
        return parse_json(text)
    return text_payload(text)


# -- the one JSON decoder ------------------------------------------------------
def loads_json(text: str) -> Any:
    """Parse JSON from a client (a body, a batch, a WebSocket frame, a source's
    line), refusing what some client could not read back.

    RFC 8259 as browsers parse it: no ``NaN``/``Infinity``, no number beyond
    a double (``1e400`` would go out as ``Infinity``), at most ``MAX_DEPTH``
    nested arrays/objects (counted before parsing, without recursion, so a
    deep body cannot reach the interpreter's recursion limit here or in any
    encoder later), no lone surrogates (not encodable as UTF-8). Any failure
    is a 400 ``bad_json``.
    """
    _check_depth(text)
    # Every float literal goes through _float_in_range (one call each). An
    # integer can pass a double's range only with 309 digits or more: its
    # hook, a call per integer, runs only for a text that may hold one.
    decoder = _INTS_CHECKED if _LONG_DIGITS.search(text) else _DECODER
    try:
        if text.startswith("\ufeff"):
            raise ValueError("a byte order mark is not JSON")
        value = decoder.decode(text)
    except ValueError as e:  # JSONDecodeError, our hooks' refusals, int digit limit
        raise bad_request("bad_json", f"not valid JSON: {e}") from None
    except RecursionError:  # not reachable past _check_depth; kept as a 400 if ever
        raise _too_deep() from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            _dumps(value).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("bad_json", "JSON holds a lone surrogate") from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _float_in_range(literal: str) -> float:
    value = float(literal)
    if value in _INFINITIES:
        raise _out_of_range(literal)
    return value


def _int_in_range(literal: str) -> int:
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        raise _out_of_range(literal) from None
    return value


def _out_of_range(literal: str) -> ValueError:
    shown = literal if len(literal) <= 40 else literal[:40] + "..."
    return ValueError(f"the number {shown} does not fit a double")


_INFINITIES = (float("inf"), float("-inf"))
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_float_in_range)
_INTS_CHECKED = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_float_in_range, parse_int=_int_in_range
)
_LONG_DIGITS = re.compile(r"[0-9]{309}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{309}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Bytes: every bracket as "[" or "]" (types do not change nesting) and
# quotes (where strings start and end) kept, everything else dropped.
_UNIFY = bytes.maketrans(b"{}", b"[]")
_DROP = bytes(set(range(256)) - set(b'[]{}"'))
_RUN = re.compile(rb"\[+|\]+")
_LEAF_PASSES = 4
_TOO_MANY_OPEN = b"[" * (MAX_DEPTH + 1)


def _check_depth(text: str) -> None:
    """Refuse more than ``MAX_DEPTH`` nested arrays/objects, without recursion.

    A text with at most ``MAX_DEPTH`` opening brackets cannot nest deeper:
    two ``str.count`` calls settle that for nearly every message. Otherwise,
    in time linear in the text and in C but for the last step: the brackets
    outside strings are kept (as bytes); ``MAX_DEPTH + 1`` openers in a row
    are refused at once; a few passes drop the innermost pairs (``[]``: one
    level of nesting everywhere, so a wide document shrinks to little); and
    the runs of what is left are counted, stopping as soon as the depth
    passes the limit. Never slower than ``json.loads`` on the same text.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    if "\\" in text:  # an escaped quote does not end a string
        text = text.replace("\\\\", "").replace('\\"', "")
    kept = text.encode("utf-8", "surrogatepass").translate(_UNIFY, _DROP)
    # Quotes are now in pairs around each string's brackets; most strings
    # have none ("" goes; so does the "" between two strings, which merges
    # them). Only brackets inside strings take the slower cut.
    kept = kept.replace(b'""', b"")
    if b'"' in kept:
        kept = b"".join(kept.split(b'"')[::2])
    if _TOO_MANY_OPEN in kept:  # a run of openers: the usual deep body, found in C
        raise _too_deep()
    limit = MAX_DEPTH
    for _ in range(_LEAF_PASSES):
        inner = kept.replace(b"[]", b"")
        if len(inner) == len(kept):
            break
        kept = inner
        limit -= 1  # each pass took one level off the deepest path too
    depth = 0
    for run in _RUN.findall(kept):
        if run[0] == 0x5B:  # "["
            depth += len(run)
            if depth > limit:
                raise _too_deep()
        else:
            depth -= len(run)


def _too_deep() -> PushdError:
    return bad_request("bad_json", f"JSON nested deeper than {MAX_DEPTH} arrays/objects")


# -- payloads: a message's data, encoded once -----------------------------------
def _make_dumps() -> Callable[[Any], str]:
    """Compact JSON, refusing NaN and infinities, at the C encoder's speed.

    ``JSONEncoder.encode`` builds a new C encoder on every call, a third of
    the cost of encoding a small message; this one is built once. Without
    circular-reference markers: a cyclic value (only a source could make
    one) ends in RecursionError, which :func:`_encode` refuses like any
    other value it cannot encode.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make = json.encoder.c_make_encoder
    if make is None:  # no C accelerator (another interpreter)
        return encoder.encode
    encode = make(
        None, encoder.default, json.encoder.encode_basestring, None, ":", ",",
        False, False, False,
    )
    return lambda value: "".join(encode(value, 0))


_dumps = _make_dumps()
_encode_string: Callable[[str], str] = json.encoder.encode_basestring  # as _dumps does a str


class Payload:
    """A message's data, checked and encoded before it is stored.

    ``json`` is the data as compact UTF-8 JSON, the one encoding every wire
    format splices in (for text, a JSON string); ``text`` is the text of a
    text body and None for a JSON value: SSE sends a JSON value as JSON text
    and a text body as itself, so the JSON string ``"abc"`` and the text
    ``abc`` stay apart. Encoding before storing means nothing is stored that
    some transport could not encode, and nothing is encoded twice.
    """

    __slots__ = ("json", "text")

    def __init__(self, json: bytes, text: str | None) -> None:
        self.json = json
        self.text = text

    @property
    def is_json(self) -> bool:
        return self.text is None

    @property
    def value(self) -> Any:
        """The data as a Python value (decoded again: nothing hot reads this)."""
        return self.text if self.text is not None else json.loads(self.json)

    def __repr__(self) -> str:
        kind = "json" if self.text is None else "text"
        return f"<Payload {kind} {self.json[:40]!r}>"


def text_payload(text: str) -> Payload:
    """A text body (a PushdError 400 for a lone surrogate, which UTF-8 cannot hold)."""
    try:  # a str is a JSON string: the encoder's own C function for one, directly
        return Payload(_encode_string(text).encode("utf-8"), text)
    except UnicodeEncodeError:
        raise bad_request("bad_json", "not encodable as JSON: a lone surrogate") from None


def parse_json(text: str) -> Payload:
    """JSON text from a client or a source's line, parsed strictly, as a payload."""
    return Payload(_encode(loads_json(text)), None)


def json_payload(value: Any, checked: bool = False) -> Payload:
    """A Python value as a JSON payload, held to :func:`loads_json`'s rules.

    NaN, infinities, integers beyond a double, nesting past ``MAX_DEPTH``,
    lone surrogates and values JSON has no form for are a PushdError 400
    ``bad_json``. ``checked`` says the value came out of :func:`loads_json`
    (a batch item, a WebSocket frame's data), so only the encoding is left.
    """
    data = _encode(value)
    if not checked and (
        data.count(b"[") + data.count(b"{") > MAX_DEPTH or _LONG_DIGITS_BYTES.search(data)
    ):
        loads_json(data.decode("utf-8"))  # rare: the full rules on what was encoded
    return Payload(data, None)


def as_payload(data: Any) -> Payload:
    """What a broker stores for ``data``: a Payload as it is, a str as text,
    any other value as JSON."""
    if type(data) is Payload:
        return data
    if isinstance(data, str):
        return text_payload(data)
    return json_payload(data)


def _encode(value: Any) -> bytes:
    try:
        return _dumps(value).encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError) as e:
        message = "a lone surrogate" if isinstance(e, UnicodeEncodeError) else str(e)[:100]
        raise bad_request("bad_json", f"not encodable as JSON: {message}") from None


class Message:
    """One published message, immutable once the broker has assigned its id.

    ``payload`` is its data, checked and JSON-encoded once before it was
    stored (:class:`Payload`); ``encoded`` caches each wire format's bytes
    (see :mod:`pushd.wire`), so a message is encoded once per format however
    many subscribers it reaches.
    """

    __slots__ = ("channel", "encoded", "event", "id", "payload", "seq", "time")

    def __init__(
        self, id: str, seq: int, channel: str, event: str, data: Payload | Any, time: int
    ) -> None:
        self.id = id
        self.seq = seq
        self.channel = channel
        self.event = event
        self.payload = as_payload(data)
        self.time = time
        self.encoded: dict[str, Any] = {}

    @property
    def data(self) -> Any:
        """The data as a Python value: text as a str, JSON decoded again."""
        return self.payload.value

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
