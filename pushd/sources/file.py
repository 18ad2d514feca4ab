"""``file``: follow a file like ``tail -F``, one message per new line.

The file is polled on the clock (``stat`` + ``read``) every ``interval``
seconds: simple, portable, and it works for files on any filesystem. Each
poll notices

- truncation (the file got shorter than what was read): read again from 0.
  A file truncated and written past the old length between two polls is not
  shorter, so the last bytes read are kept and compared with what the file
  now holds at that place (one small ``pread`` a poll): different bytes also
  mean "read again from 0";
- rotation (the path now names another file, e.g. ``logrotate`` renamed the
  old one and created a new one): finish the old file, then follow the new
  one from its start;
- a missing file: wait for it (logged once), like ``tail -F``.

Reads are synchronous on the reactor thread, bounded to ``max_read`` bytes a
poll so a huge backlog cannot stall the daemon.
"""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.sources.base import LineBuffer, Periodic, Settings, decode_line

MAX_READ = 1024 * 1024
TAIL = 64  # bytes before the read position, checked each poll for a rewrite


class FileSource(Periodic):
    """Publishes each line appended to ``path`` to ``channel``."""

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        channel: str,
        path: str,
        *,
        from_start: bool = False,
        as_json: bool = False,
        interval: float = 0.25,
        max_read: int = MAX_READ,
    ) -> None:
        # The first poll runs at start-up, so "start at the end" means the
        # end as of start-up.
        super().__init__(broker, f"file:{channel}", clock, interval)
        self.channel = channel
        self.path = path
        self.from_start = from_start
        self.as_json = as_json
        self.max_read = max_read
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        self._position = 0
        self._tail = b""  # the last bytes read, ending at _position
        self._lines = LineBuffer()
        self._opened_once = False
        self._missing_logged = False

    def stopService(self) -> Deferred[None] | None:
        stopped = super().stopService()
        self._close()
        return stopped

    # -- one poll -------------------------------------------------------------
    def tick(self) -> None:
        """Read what is new; notice truncation, rotation and a missing file."""
        try:
            self._poll()
        except OSError as e:  # permissions, I/O errors: log, keep polling
            self.errors += 1
            self.log.warn("source {source}: {path}: {why}", source=self.name,
                          path=self.path, why=e.strerror or str(e))
            self._close()

    def _poll(self) -> None:
        if self._file is None and not self._open():
            return
        assert self._file is not None
        size = os.fstat(self._file.fileno()).st_size
        if size < self._position or self._rewritten():
            self.log.info("source {source}: {path} was truncated, reading from its start",
                          source=self.name, path=self.path)
            self._file.seek(0)
            self._position = 0
            self._tail = b""
            self._lines = LineBuffer()
        budget = self._read(self.max_read)
        if budget <= 0:
            return  # more to read: finish this file before looking for a new one
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, nothing new yet: keep the old one, like tail -F
        if (st.st_dev, st.st_ino) != self._identity:
            self.log.info("source {source}: {path} was replaced, following the new file",
                          source=self.name, path=self.path)
            self._read(budget)  # whatever was written to the old one meanwhile
            tail = self._lines.flush()
            if tail is not None:
                self._line(tail)
            self._close()
            self.restarts += 1
            if self._open():
                self._read(budget)

    def _open(self) -> bool:
        try:
            f = open(self.path, "rb")  # kept open across polls
        except FileNotFoundError:
            if not self._missing_logged:
                self.log.warn("source {source}: waiting for {path} to exist",
                              source=self.name, path=self.path)
                self._missing_logged = True
            self._opened_once = True  # a file that appears later is read whole
            return False
        st = os.fstat(f.fileno())
        self._file = f
        self._identity = (st.st_dev, st.st_ino)
        self._lines = LineBuffer()
        if not self._opened_once and not self.from_start:
            f.seek(0, os.SEEK_END)
        self._position = f.tell()
        self._tail = self._bytes_before(self._position)
        self._opened_once = True
        self._missing_logged = False
        self.log.info("source {source}: following {path}", source=self.name, path=self.path)
        return True

    def _bytes_before(self, position: int) -> bytes:
        """What the file holds now in the ``TAIL`` bytes before ``position``."""
        assert self._file is not None
        n = min(TAIL, position)
        return os.pread(self._file.fileno(), n, position - n) if n else b""

    def _rewritten(self) -> bool:
        """The bytes last read are no longer there: truncated and written again."""
        return bool(self._tail) and self._bytes_before(self._position) != self._tail

    def _read(self, budget: int) -> int:
        """Read up to ``budget`` bytes; publish whole lines; return what is left."""
        assert self._file is not None
        while budget > 0:
            data = self._file.read(min(budget, 65536))
            if not data:
                break
            budget -= len(data)
            self._position += len(data)
            self._tail = (self._tail + data)[-TAIL:]
            for line in self._lines.feed(data):
                self._line(line)
        self.errors += self._lines.overflowed
        self._lines.overflowed = 0
        return budget

    def _line(self, raw: bytes) -> None:
        ok, data = decode_line(self, raw, self.as_json)
        if ok:
            self.publish(self.channel, data)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._identity = None


def from_config(table: dict[str, Any], broker: Broker, reactor: Any) -> FileSource:
    s = Settings(table)
    channel = s.channel()
    path = s.get("path", str)
    if not path:
        raise ConfigError("[[source]] file: path must not be empty")
    from_start = s.get("from_start", bool, False)
    fmt = s.choice("format", ("text", "json"), "text")
    interval = s.number("interval", 0.25)
    if interval <= 0:
        raise ConfigError("[[source]] file: interval must be more than 0")
    s.done()
    return FileSource(
        broker, reactor, channel, path, from_start=from_start, as_json=fmt == "json",
        interval=interval,
    )
