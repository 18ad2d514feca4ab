"""Log observers for ``twistd --logger``: JSON lines for shippers, or filtered text.

twistd starts its log observer before it reads pushd's config file, so the
format is chosen on its command line (``--logger pushd.logs.json_logger``)
and the level from ``$PUSHD_LOG_LEVEL`` (``debug``, ``info`` (default),
``warn``, ``error``). Without ``--logger`` twistd's own text log is used and
every level is shown.

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level``,
``namespace``, ``message`` (the formatted text), every plain value the event
carried (``channel``, ``peer``, ``transport``, ``source``, ...), and
``traceback`` when a failure was logged, and ``worker`` (its index) from
a worker process of ``workers = N`` (lines without it are the parent's).
One object per line, so ``jq``, Vector, Fluent Bit and Loki read it without a parser of their own.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    InvalidLogLevelError,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

_PLAIN = (str, int, float, bool, type(None))


def event_as_dict(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready form of one twisted.logger event."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message"):
            continue
        if isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one line of JSON to ``stream``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event_as_dict(event), default=str, separators=(",", ":"))
        self.stream.write(line + "\n")
        self.stream.flush()


def level_from_env() -> LogLevel:
    name = os.environ.get("PUSHD_LOG_LEVEL", "info").strip().lower()
    try:
        return LogLevel.levelWithName(name)
    except InvalidLogLevelError:  # log at info rather than refuse to start
        return LogLevel.info


def _worker() -> int | None:
    """The index of this worker process (``workers = N``), None in the parent."""
    value = os.environ.get("PUSHD_WORKER", "")  # pushd.workers.WORKER_ENV
    return int(value) if value.isdigit() and value != "0" else None


@implementer(ILogObserver)
class _WorkerTagged:
    """Marks every event of a worker process with its index, since all workers
    write to the one stdout the service manager collects."""

    def __init__(self, observer: ILogObserver, index: int, text: bool) -> None:
        self.observer = observer
        self.index = index
        self.text = text

    def __call__(self, event: dict[str, Any]) -> None:
        event = dict(event, worker=self.index)
        if self.text:  # twistd's text shows log_system in brackets
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{level.name if level else 'info'}"
            event["log_system"] = f"worker {self.index} {system}"
        self.observer(event)


def _filtered(observer: ILogObserver, text: bool = False) -> ILogObserver:
    predicate = LogLevelFilterPredicate(defaultLogLevel=level_from_env())
    index = _worker()
    if index is not None:
        observer = _WorkerTagged(observer, index, text)
    return FilteringLogObserver(observer, [predicate])


def json_logger() -> ILogObserver:
    """``twistd --logger pushd.logs.json_logger``: JSON lines on stdout."""
    return _filtered(JsonLinesObserver(sys.stdout))


def text_logger() -> ILogObserver:
    """``twistd --logger pushd.logs.text_logger``: twistd's text, level filtered."""
    return _filtered(textFileLogObserver(sys.stdout), text=True)
