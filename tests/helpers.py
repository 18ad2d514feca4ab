"""Test doubles that record what a subscriber is told, and small parsers."""

from __future__ import annotations

from typing import Any

from pushd.model import Message


class Recorder:
    """A broker subscriber that writes down everything, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def deliver(self, message: Message) -> None:
        self.events.append(("message", message.id))

    def reset(self, channel: str, cursor: str | None) -> None:
        self.events.append(("reset", cursor))

    def closed(self, channel: str) -> None:
        self.events.append(("closed", channel))

    @property
    def ids(self) -> list[str]:
        return [v for k, v in self.events if k == "message"]


def parse_sse(text: str) -> list[dict[str, str]]:
    """Dispatch events exactly as the WHATWG EventSource parser does.

    Returns one dict per dispatched event: ``data``, ``event`` (``message``
    when absent) and ``id`` (the last event id at dispatch), and a
    ``{"retry": ms}`` entry where a valid retry field was seen. Comments and
    unknown fields are ignored.
    """
    events = []
    data: list[str] = []
    data_seen = False
    event = ""
    last_id = ""
    # Lines end with CRLF, LF or CR.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")[:-1]  # an unterminated last line is not processed
    for line in lines:
        if line == "":
            if data_seen:
                buf = "\n".join(data)
                events.append({"data": buf, "event": event or "message", "id": last_id})
            data, data_seen, event = [], False, ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
            data_seen = True
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry":
            if value.isdigit():
                events.append({"retry": value})
    return events
