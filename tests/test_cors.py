"""Origins: listed pages get CORS headers and preflights; others are served plainly."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq

APP = "https://app.example"


@pytest.fixture
def listed(start_daemon: Any) -> Any:
    def edit(s: Any) -> None:
        s.allowed_origins = [APP]

    return start_daemon(edit)


@pytest_twisted.ensureDeferred
async def test_listed_origin_gets_its_own_value_echoed(listed: Any) -> None:
    r = await treq.get(listed.url + "/channels/c/poll", headers={"Origin": APP})
    assert r.code == 200
    assert r.headers.getRawHeaders("access-control-allow-origin") == [APP]
    assert r.headers.getRawHeaders("vary") == ["Origin"]
    exposed = r.headers.getRawHeaders("access-control-expose-headers")[0]
    assert {h.strip() for h in exposed.split(",")} == {"ETag", "Idempotent-Replayed"}
    await r.content()


@pytest.mark.parametrize("origin", ["https://evil.example", None])
@pytest_twisted.ensureDeferred
async def test_unlisted_or_no_origin_is_served_without_cors(
    listed: Any, origin: str | None
) -> None:
    headers = {"Origin": origin} if origin else {}
    r = await treq.get(listed.url + "/channels/c/poll", headers=headers)
    assert r.code == 200
    assert r.headers.getRawHeaders("access-control-allow-origin") is None
    await r.content()


@pytest_twisted.ensureDeferred
async def test_preflight_for_a_listed_origin(listed: Any) -> None:
    r = await treq.request(
        "OPTIONS",
        listed.url + "/channels/c/events",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert r.code == 204
    allowed = r.headers.getRawHeaders("access-control-allow-headers")[0]
    assert {h.strip().lower() for h in allowed.split(",")} >= {
        "content-type",
        "last-event-id",
        "if-none-match",
        "authorization",
        "idempotency-key",
    }
    assert r.headers.getRawHeaders("access-control-allow-origin") == [APP]


@pytest_twisted.ensureDeferred
async def test_preflight_for_an_unlisted_origin_is_refused(listed: Any) -> None:
    r = await treq.request(
        "OPTIONS",
        listed.url + "/channels/c",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.code == 403
    assert (await r.json())["error"] == "forbidden_origin"


@pytest_twisted.ensureDeferred
async def test_star_allows_any_origin(start_daemon: Any) -> None:
    def edit(s: Any) -> None:
        s.allowed_origins = ["*"]

    running = start_daemon(edit)
    r = await treq.get(running.url + "/healthz", headers={"Origin": "https://x.example"})
    assert r.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    await r.content()


@pytest_twisted.ensureDeferred
async def test_default_serves_same_origin_and_lists_nobody(running: Any) -> None:
    r = await treq.get(running.url + "/healthz", headers={"Origin": running.url})
    assert r.code == 200
    assert r.headers.getRawHeaders("access-control-allow-origin") is None
    await r.content()
