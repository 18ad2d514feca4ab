"""The publish API over a real port: publish, batch, info, delete, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq

JSON = {"Content-Type": "application/json"}


pytestmark = pytest.mark.both_brokers


async def call(method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    response = await treq.request(method, url, **kw)
    text = await response.text("utf-8")
    return response.code, (json.loads(text) if text else None), response.headers


@pytest_twisted.ensureDeferred
async def test_publish_text_and_json_then_read_info(running: Any) -> None:
    url = running.url + "/channels/news"
    code, body, headers = await call("POST", url, data=b"hello")
    assert code == 201
    assert body["channel"] == "news" and body["subscribers"] == 0
    first = body["id"]
    assert first.startswith(running.broker.epoch + "-")
    assert headers.getRawHeaders("content-type") == ["application/json"]

    code, body, _ = await call("POST", url, data=b'{"p": [1, 2]}', headers=JSON)
    assert code == 201
    code, info, _ = await call("GET", url)
    assert (code, info) == (
        200,
        {"channel": "news", "last_id": body["id"], "subscribers": 0, "history": 2},
    )
    code, page, _ = await call("GET", url + "/poll")
    assert [m["data"] for m in page["messages"]] == ["hello", {"p": [1, 2]}]
    assert [m["event"] for m in page["messages"]] == ["message", "message"]


@pytest_twisted.ensureDeferred
async def test_event_name_and_subscriber_count(running: Any) -> None:
    from tests.helpers import Recorder

    running.broker.subscribe("news", Recorder())
    code, body, _ = await call("POST", running.url + "/channels/news?event=price", data=b"1")
    assert (code, body["subscribers"]) == (201, 1)
    _, page, _ = await call("GET", running.url + "/channels/news/poll")
    assert page["messages"][0]["event"] == "price"


@pytest_twisted.ensureDeferred
async def test_batch_is_all_or_nothing(running: Any) -> None:
    items = [{"channel": "a", "data": 1}, {"channel": "b", "data": "x", "event": "note"}]
    code, body, _ = await call(
        "POST", running.url + "/publish", data=json.dumps(items).encode(), headers=JSON
    )
    assert code == 201
    assert [m["channel"] for m in body["messages"]] == ["a", "b"]
    _, page, _ = await call("GET", running.url + "/channels/b/poll")
    assert page["messages"][0]["event"] == "note"

    bad = [{"channel": "c", "data": 1}, {"channel": "no good", "data": 2}]
    code, body, _ = await call(
        "POST", running.url + "/publish", data=json.dumps(bad).encode(), headers=JSON
    )
    assert code == 400 and body["error"] == "bad_channel"
    assert "item 1" in body["message"]
    code, _, _ = await call("GET", running.url + "/channels/c")
    assert code == 404  # the valid first item was not published either


@pytest_twisted.ensureDeferred
async def test_delete_closes_and_forgets(running: Any) -> None:
    from tests.helpers import Recorder

    url = running.url + "/channels/gone"
    await call("POST", url, data=b"x")
    r = Recorder()
    running.broker.subscribe("gone", r)
    code, body, _ = await call("DELETE", url)
    assert (code, body) == (200, {"channel": "gone", "deleted": True, "subscribers": 1})
    assert r.events == [("closed", "gone")]
    assert (await call("GET", url))[0] == 404
    assert (await call("DELETE", url))[0] == 404


@pytest_twisted.ensureDeferred
async def test_healthz(running: Any) -> None:
    assert (await call("GET", running.url + "/healthz"))[:2] == (200, {"status": "ok"})


BIG = b"x" * (64 * 1024 + 1)

BAD = [
    # (method, path, body, headers, status, error code)
    ("POST", "/channels/bad%20name", b"x", {}, 400, "bad_channel"),
    ("POST", "/channels/" + "a" * 129, b"x", {}, 400, "bad_channel"),
    ("POST", "/channels/ok%2Fslash", b"x", {}, 404, "not_found"),  # a slash is a path
    ("POST", "/channels/ok?event=reset", b"x", {}, 400, "reserved_event"),
    ("POST", "/channels/ok?event=closed", b"x", {}, 400, "reserved_event"),
    ("POST", "/channels/ok?event=bad%20event", b"x", {}, 400, "bad_event"),
    ("POST", "/channels/ok", b"\xff\xfe", {}, 400, "bad_utf8"),
    ("POST", "/channels/ok", b"{nope", JSON, 400, "bad_json"),
    ("POST", "/channels/ok", b'"\\ud800"', JSON, 400, "bad_json"),
    ("POST", "/channels/ok", BIG, {}, 413, "too_large"),
    ("POST", "/publish", b"{}", JSON, 400, "bad_batch"),
    ("POST", "/publish", b"[]", JSON, 400, "bad_batch"),
    ("POST", "/publish", b"[1]", JSON, 400, "bad_batch"),
    ("POST", "/publish", b'[{"channel": "ok"}]', JSON, 400, "bad_batch"),
    ("POST", "/publish", b'[{"channel":"ok","data":1,"x":2}]', JSON, 400, "bad_batch"),
    (
        "POST",
        "/publish",
        b'[{"channel":"ok","data":1,"event":"reset"}]',
        JSON,
        400,
        "reserved_event",
    ),
    ("POST", "/publish", b"\xff", JSON, 400, "bad_utf8"),
    ("POST", "/publish", b"[", JSON, 400, "bad_json"),
    ("PUT", "/channels/ok", b"x", {}, 405, "method_not_allowed"),
    ("PATCH", "/publish", b"x", {}, 405, "method_not_allowed"),
    ("GET", "/channels/ok", None, {}, 404, "not_found"),
    ("GET", "/nowhere", None, {}, 404, "not_found"),
    ("GET", "/channels/ok/poll?limit=abc", None, {}, 400, "bad_argument"),
    ("GET", "/channels/ok/poll?limit=0", None, {}, 400, "bad_argument"),
    ("GET", "/channels/ok/longpoll?timeout=-1", None, {}, 400, "bad_argument"),
    ("GET", "/channels/bad%20name/events", None, {}, 400, "bad_channel"),
    ("GET", "/channels/bad%20name/stream", None, {}, 400, "bad_channel"),
    ("GET", "/channels/bad%20name/poll", None, {}, 400, "bad_channel"),
    ("GET", "/channels/bad%20name/longpoll", None, {}, 400, "bad_channel"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), BAD)
@pytest_twisted.ensureDeferred
async def test_bad_input_is_refused_with_json_and_changes_nothing(
    running: Any, method: str, path: str, body: bytes | None, headers: dict, status: int, code: str
) -> None:
    before = await call("GET", running.url + "/channels/ok/poll")
    got, answer, response_headers = await call(
        method, running.url + path, data=body, headers=headers
    )
    assert (got, answer["error"]) == (status, code)
    assert isinstance(answer["message"], str) and answer["message"]
    assert response_headers.getRawHeaders("content-type") == ["application/json"]
    if status == 405:
        assert response_headers.getRawHeaders("allow")
    after = await call("GET", running.url + "/channels/ok/poll")
    assert after[:2] == before[:2]
    assert running.broker.channel_count() == 0
