"""No payload can inject an SSE field or event: read back per WHATWG rules."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq

from tests.clients import Collector, subscribed
from tests.helpers import parse_sse

PAYLOADS = [
    "plain",
    "a\nb",
    "a\rb",
    "a\r\nb",
    "\n\nevent: x",
    "\r\n\r\nevent: injected\r\ndata: evil\r\n\r\n",
    "",
    "trailing\n",
    "\n",
    "\r",
    "id: 999",
    "data: y",
    ": not a comment",
    "retry: 1",
    " leading space",
    "  two spaces\n\tand a tab",
    "multi\n\nblank\n\nlines",
    "unicode é — 😀",
]


def as_browser_sees(payload: str) -> str:
    """CR and CRLF become LF; nothing else changes."""
    return payload.replace("\r\n", "\n").replace("\r", "\n")


@pytest_twisted.ensureDeferred
async def test_payloads_cannot_inject_fields_or_events(running: Any) -> None:
    stream = await Collector.get(running.url + "/channels/inj/events")
    await subscribed(running.broker, "inj")
    ids = []
    for payload in PAYLOADS:
        r = await treq.post(
            running.url + "/channels/inj",
            data=payload.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        ids.append((await r.json())["id"])
    await stream.contains(ids[-1].encode() + b"\n")
    await stream.until(lambda data: data.endswith(b"\n\n"))
    events = [e for e in parse_sse(stream.data.decode()) if "data" in e]
    assert [e["id"] for e in events] == ids
    assert [e["event"] for e in events] == ["message"] * len(PAYLOADS)
    assert [e["data"] for e in events] == [as_browser_sees(p) for p in PAYLOADS]
    retries = [e for e in parse_sse(stream.data.decode()) if "retry" in e]
    assert retries == [{"retry": "3000"}]  # only the server's own


@pytest_twisted.ensureDeferred
async def test_json_strings_with_newlines_stay_one_line(running: Any) -> None:
    stream = await Collector.get(running.url + "/channels/inj/events")
    await subscribed(running.broker, "inj")
    r = await treq.post(
        running.url + "/channels/inj",
        data=b'{"text": "a\\n\\nevent: x"}',
        headers={"Content-Type": "application/json"},
    )
    mid = (await r.json())["id"]
    await stream.contains(mid.encode() + b"\n")
    await stream.until(lambda data: data.endswith(b"\n\n"))
    (event,) = [e for e in parse_sse(stream.data.decode()) if "data" in e]
    assert event == {"id": mid, "event": "message", "data": '{"text":"a\\n\\nevent: x"}'}
