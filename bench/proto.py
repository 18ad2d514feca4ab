"""The load generator's parsers, with no I/O: unit-tested on their own.

Every published body is a JSON object that starts ``{"s":SEQ,"t":MICROS,``
(sequence number, publish time on CLOCK_MONOTONIC in µs). Every server under
test carries the body verbatim inside its own framing (an SSE ``data:``
line, an NDJSON line, a WebSocket text frame, a poll answer), so one
scanner finds the messages in any of them: :class:`SeqScanner` keeps the
bytes after the last complete match and rescans them with the next read,
so a message split across reads is found once.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field

SEQ_RE = re.compile(rb'"s":(\d+),"t":(\d+),')
# A match is at most this long, so a tail longer than it holds no match start.
_MAX_MATCH = 64


def make_body(seq: int, t_us: int, size: int = 100) -> bytes:
    """A JSON body of about ``size`` bytes carrying ``seq`` and ``t_us``."""
    head = b'{"s":%d,"t":%d,"p":"' % (seq, t_us)
    pad = max(0, size - len(head) - 2)
    return head + b"x" * pad + b'"}'


class SeqScanner:
    """Finds ``(seq, t_us)`` pairs in a byte stream fed in arbitrary pieces."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        buf = self.tail + data if self.tail else data
        found = SEQ_RE.findall(buf)
        if found:
            last = buf.rfind(b'"s":')
            # the last match start is a complete match only if it matched
            m = SEQ_RE.match(buf, last)
            self.tail = buf[last:] if m is None else buf[m.end() :]
            out = [(int(s), int(t)) for s, t in found]
        else:
            out = []
            self.tail = buf
        if len(self.tail) > _MAX_MATCH:
            cut = self.tail.rfind(b'"s":')
            if cut == -1:
                self.tail = self.tail[-_MAX_MATCH:]
            elif cut > 0:
                self.tail = self.tail[cut:]
        return out


@dataclass
class SequenceChecker:
    """Checks that one subscriber got every expected message once, in order.

    ``expected`` is the ordered list of sequence numbers this subscriber
    should see; ``None`` means ``1..total`` (every message of one channel).
    """

    total: int
    expected: list[int] | None = None
    index: int = 0  # position of the next expected message
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0  # messages skipped (seen a later one first)
    received: int = 0

    def want(self) -> int | None:
        if self.expected is None:
            return self.index + 1 if self.index < self.total else None
        return self.expected[self.index] if self.index < len(self.expected) else None

    def count(self) -> int:
        return self.total if self.expected is None else len(self.expected)

    def see(self, seq: int) -> None:
        self.received += 1
        want = self.want()
        if seq == want:
            self.index += 1
            return
        if want is None or seq < want:
            # already passed: a repeat (or a very late one, also counted here)
            self.duplicates += 1
            return
        # seq is later than the one we wait for: everything between is missing
        if self.expected is None:
            skipped = seq - want
            self.index = seq
        else:
            try:
                pos = self.expected.index(seq, self.index)
            except ValueError:
                self.out_of_order += 1
                return
            skipped = pos - self.index
            self.index = pos + 1
        self.gaps += skipped

    @property
    def complete(self) -> bool:
        return self.index >= self.count()

    @property
    def ok(self) -> bool:
        return self.complete and not (self.duplicates or self.out_of_order or self.gaps)

    def missing(self) -> int:
        return self.count() - self.index + self.gaps


MARK = b'"s":'


class MarkCounter:
    """Counts message starts (``"s":``) in a stream fed in pieces, cheaply.

    The load generator's read path only records what arrived and when
    (parsing comes after the run, see :func:`replay`); this count is how it
    knows, while the run goes on, that every message is in. The last three
    bytes of each piece are carried over, so a marker split across two
    reads is counted once; three bytes cannot hold a whole marker, so none
    is counted twice.
    """

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, data: bytes) -> int:
        buf = self.tail + data if self.tail else data
        self.tail = buf[-3:]
        return buf.count(MARK)


def replay(
    recording: list[tuple[int, bytes]], ws: bool = False
) -> tuple[list[tuple[int, int, int]], int]:
    """Parse a recorded connection after the run.

    ``recording`` holds ``(arrival_ns, bytes)`` per read, after the response
    head. Returns ``[(seq, sent_us, arrival_us), ...]`` in arrival order and
    how many WebSocket pings (opcode 9) arrived; a message's arrival time is
    that of the read that completed it.
    """
    scanner = SeqScanner()
    out: list[tuple[int, int, int]] = []
    pings = 0
    buf = b""
    for t_ns, data in recording:
        t_us = t_ns // 1000
        if ws:
            frames, buf = ws_frames(buf + data)
            for opcode, payload in frames:
                if opcode == 9:
                    pings += 1
                elif opcode in (0, 1):
                    out.extend((s, t, t_us) for s, t in scanner.feed(payload))
        else:
            out.extend((s, t, t_us) for s, t in scanner.feed(data))
    return out, pings


# -- HTTP/1.1 responses -------------------------------------------------------
@dataclass
class Head:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes of the status line and headers, blank line included


def parse_head(buf: bytes) -> Head | None:
    """The status line and headers at the start of ``buf``, or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end == -1:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), headers, end + 4)


class BodyReader:
    """One response body after its head: Content-Length or chunked.

    ``feed`` returns ``(body, rest)`` once the body is complete (``rest`` is
    what follows it on the connection), else None.
    """

    def __init__(self, head: Head) -> None:
        self.chunked = head.headers.get("transfer-encoding", "").lower() == "chunked"
        self.length = int(head.headers.get("content-length", "0"))
        self.buf = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        self.buf += data
        if not self.chunked:
            if len(self.buf) < self.length:
                return None
            return self.buf[: self.length], self.buf[self.length :]
        body = []
        pos = 0
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol == -1:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            start = eol + 2
            if size == 0:
                end = buf.find(b"\r\n", start)  # no trailers expected
                if end == -1:
                    return None
                return b"".join(body), buf[end + 2 :]
            if len(buf) < start + size + 2:
                return None
            body.append(buf[start : start + size])
            pos = start + size + 2


# -- WebSocket (client side) -----------------------------------------------------
def ws_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete unmasked server frames at the start of ``buf`` and the rest."""
    frames = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length = b1 & 0x7F
        hdr = 2
        if length == 126:
            if n - pos < 4:
                break
            (length,) = struct.unpack_from("!H", buf, pos + 2)
            hdr = 4
        elif length == 127:
            if n - pos < 10:
                break
            (length,) = struct.unpack_from("!Q", buf, pos + 2)
            hdr = 10
        if b1 & 0x80:
            hdr += 4  # a masked frame from a server: tolerate it, payload stays masked
        if n - pos < hdr + length:
            break
        frames.append((b0 & 0x0F, buf[pos + hdr : pos + hdr + length]))
        pos += hdr + length
    return frames, buf[pos:]


def ws_client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One masked, final client frame."""
    mask = mask if mask is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


# -- latency ------------------------------------------------------------------
def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])
