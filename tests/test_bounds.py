"""Every byte bounded (DESIGN.md): poll and long-poll answers, the history of
the whole broker, and what waits for one WebSocket connection.

Bounds are checked on bytes a client sees or the server counts (an answer's
body, the broker's history total, an outlet's queue), never on process RSS.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq

from pushd.config import ConfigError, Settings, check

BIG = "x" * (60 * 1024)


async def get_raw(url: str) -> tuple[int, bytes]:
    response = await treq.get(url, persistent=False)
    return response.code, await response.content()


def publish_all(running: Any, channel: str, bodies: list[Any]) -> list[str]:
    return [running.broker.publish(channel, body).result.id for body in bodies]


# -- poll and long-poll answers --------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_poll_answer_stays_under_the_default_max_bytes(running: Any) -> None:
    """Finding 4: 40 messages of 60 KiB asked for at once make one answer of
    at most 1 MiB, not one of 2.4 MB."""
    ids = publish_all(running, "big", [BIG] * 40)
    code, body = await get_raw(running.url + "/channels/big/poll?limit=1000")
    assert code == 200
    assert len(body) <= 1024 * 1024
    page = json.loads(body)
    got = [m["id"] for m in page["messages"]]
    assert got == ids[: len(got)] and len(got) == 17  # the oldest first, as many as fit
    assert page["cursor"] == got[-1]  # the cursor is the last message included


@pytest.mark.parametrize("transport", ["poll", "longpoll"])
@pytest_twisted.ensureDeferred
async def test_paging_with_the_cursor_gets_every_message_once_in_order(
    start_daemon: Any, transport: str
) -> None:
    max_bytes = 5000

    def edit(s: Settings) -> None:
        s.poll.max_bytes = max_bytes

    running = start_daemon(edit)
    # sizes around the bound, and one message larger than it on its own
    bodies: list[Any] = [("m%d " % i) + "y" * (37 * i % 1900) for i in range(60)]
    bodies[25] = "z" * (3 * max_bytes)
    bodies[26] = {"json": "w" * 4000}
    ids = publish_all(running, "p", bodies)
    extra = "&timeout=0" if transport == "longpoll" else ""

    got: list[str] = []
    data: list[Any] = []
    pages = 0
    code, body = await get_raw(running.url + f"/channels/p/{transport}?since={ids[0]}{extra}")
    got, data = [ids[0]], [bodies[0]]
    while True:
        assert code == 200, body
        page = json.loads(body)
        if not page["messages"]:
            break
        pages += 1
        if len(page["messages"]) > 1:
            assert len(body) <= max_bytes  # an answer of several messages fits the bound
        else:
            assert len(body) <= max_bytes or page["messages"][0]["id"] == ids[25]
        got += [m["id"] for m in page["messages"]]
        data += [m["data"] for m in page["messages"]]
        assert page["cursor"] == got[-1]
        code, body = await get_raw(
            running.url + f"/channels/p/{transport}?since={page['cursor']}{extra}"
        )
    assert got == ids  # every message once, in order
    assert data == bodies
    assert pages > 10  # it did page


@pytest_twisted.ensureDeferred
async def test_poll_without_since_pages_from_the_oldest_of_the_window(start_daemon: Any) -> None:
    running = start_daemon(lambda s: setattr(s.poll, "max_bytes", 2000))
    ids = publish_all(running, "w", ["v" * 300] * 20)
    code, body = await get_raw(running.url + "/channels/w/poll?limit=10")
    page = json.loads(body)
    assert code == 200 and len(body) <= 2000
    window = ids[-10:]
    got = [m["id"] for m in page["messages"]]
    assert got == window[: len(got)] and 1 <= len(got) < 10
    while page["messages"]:
        code, body = await get_raw(running.url + f"/channels/w/poll?since={page['cursor']}")
        page = json.loads(body)
        got += [m["id"] for m in page["messages"]]
    assert got == window


def test_the_new_settings_are_checked() -> None:
    settings = Settings()
    settings.poll.max_bytes = 0
    with pytest.raises(ConfigError, match=r"\[poll\] max_bytes"):
        check(settings)
    settings = Settings()
    settings.history.max_bytes = settings.limits.message_size - 1
    with pytest.raises(ConfigError, match=r"\[history\] max_bytes"):
        check(settings)
