"""The file source on a real temporary file, polled by a ``task.Clock``.

Each ``clock.advance(interval)`` runs exactly one poll, and the memory
broker publishes synchronously, so every assertion follows the poll that
caused it: appends, truncation, rotation by rename, a file that appears late.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError
from pushd.sources import build
from pushd.sources.file import FileSource
from tests.test_sources_base import Collector

TICK = 0.25


def start(path: Path, **kw: Any) -> tuple[FileSource, Collector, Clock]:
    clock = Clock()
    broker = MemoryBroker(clock)
    got = Collector(broker, "log")
    source = FileSource(broker, clock, "log", str(path), interval=TICK, **kw)
    source.startService()
    return source, got, clock


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_starts_at_the_end_and_publishes_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("old 1\nold 2\n")
    source, got, clock = start(path)
    append(path, "new 1\nnew 2\npart")
    clock.advance(TICK)
    assert got.data == ["new 1", "new 2"]  # an unfinished line waits for its newline
    append(path, "ial\n")
    clock.advance(TICK)
    assert got.data == ["new 1", "new 2", "partial"]
    source.stopService()


def test_from_start_reads_existing_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("old 1\nold 2\n")
    source, got, _ = start(path, from_start=True)
    assert got.data == ["old 1", "old 2"]
    source.stopService()


def test_truncation_restarts_from_the_beginning(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    source, got, clock = start(path)
    append(path, "a long first line\nanother long line\n")
    clock.advance(TICK)
    with open(path, "w", encoding="utf-8") as f:  # truncate, like `> app.log`
        f.write("x\n")
    clock.advance(TICK)
    append(path, "y\n")
    clock.advance(TICK)
    assert got.data == ["a long first line", "another long line", "x", "y"]
    source.stopService()


def test_truncated_and_written_past_the_old_length_between_polls(tmp_path: Path) -> None:
    """Not shorter than what was read, so only the bytes themselves tell."""
    path = tmp_path / "app.log"
    path.write_text("")
    source, got, clock = start(path)
    append(path, "first\n")
    clock.advance(TICK)
    with open(path, "w", encoding="utf-8") as f:  # truncate, then more than before
        f.write("one new line\ntwo\n")
    clock.advance(TICK)
    append(path, "three\n")
    clock.advance(TICK)
    assert got.data == ["first", "one new line", "two", "three"]
    source.stopService()


def test_a_file_rewritten_before_the_first_read_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("old old old\n")
    source, got, clock = start(path)  # at the end of the old text
    path.write_text("a different, longer text\n")
    clock.advance(TICK)
    assert got.data == ["a different, longer text"]
    source.stopService()


def test_rotation_by_rename_follows_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    source, got, clock = start(path)
    append(path, "before\n")
    clock.advance(TICK)
    os.rename(path, tmp_path / "app.log.1")
    clock.advance(TICK)  # renamed away, no new file yet: nothing lost, nothing new
    append(tmp_path / "app.log.1", "late write to the old file\n")
    path.write_text("first of the new file\n")
    clock.advance(TICK)
    append(path, "second\n")
    clock.advance(TICK)
    assert got.data == [
        "before", "late write to the old file", "first of the new file", "second",
    ]
    assert source.restarts == 1
    source.stopService()


def test_a_missing_file_is_read_whole_once_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    source, got, clock = start(path)
    clock.advance(TICK)
    path.write_text("hello\n")
    clock.advance(TICK)
    assert got.data == ["hello"]
    source.stopService()


def test_json_lines_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("")
    source, got, clock = start(path, as_json=True)
    with open(path, "ab") as f:
        f.write(b'{"ok": true}\n{broken\n\xff\xfe\n[1]\n')
    clock.advance(TICK)
    assert got.data == [{"ok": True}, [1]]
    assert source.errors == 2  # one line not JSON, one not UTF-8: both skipped
    source.stopService()


def test_stop_closes_the_file_and_stops_polling(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    source, got, clock = start(path)
    source.stopService()
    assert clock.getDelayedCalls() == []
    append(path, "after stop\n")
    clock.advance(TICK)
    assert got.data == []


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    broker = MemoryBroker(Clock())

    def build_file(**table: Any) -> Any:
        return build({"type": "file", **table}, broker, Clock())

    with pytest.raises(ConfigError, match="path is required"):
        build_file(channel="x")
    with pytest.raises(ConfigError, match="from_start has the wrong type"):
        build_file(channel="x", path="/tmp/x", from_start="yes")
    with pytest.raises(ConfigError, match="interval must be more than 0"):
        build_file(channel="x", path="/tmp/x", interval=0)
    with pytest.raises(ConfigError, match="channel 'a b' is not a valid channel name"):
        build_file(channel="a b", path="/tmp/x")
    assert isinstance(build_file(channel="x", path=str(tmp_path / "f")), FileSource)
