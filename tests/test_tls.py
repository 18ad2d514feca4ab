"""pushd listening on TLS itself (``ssl:`` listen strings), no proxy in front.

Streams take their connection over after the headers; under TLS the
connection below the HTTP channel is a protocol wrapper, not the TCP
socket, and every byte must go through the TLS layer (never straight on the
socket). These tests read the decrypted bytes a client gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import ssl

from tests.clients import RawHTTP, get_request, split_response, subscribed


@pytest.fixture
def tls_daemon(start_daemon: Any, tmp_path: Path) -> Any:
    key = ssl.KeyPair.generate(size=2048)
    cert = key.selfSignedCert(1, CN="localhost")
    pem = tmp_path / "server.pem"
    pem.write_bytes(key.dump(FILETYPE_PEM) + cert.dump(FILETYPE_PEM))

    def edit(settings: Any) -> None:
        settings.listen = [f"ssl:0:privateKey={pem}:interface=127.0.0.1"]

    return start_daemon(edit)


@pytest.mark.parametrize(
    ("transport", "path"), [("sse", "/channels/c/events"), ("stream", "/channels/c/stream")]
)
@pytest_twisted.ensureDeferred
async def test_stream_over_tls_delivers_and_cleans_up(
    tls_daemon: Any, transport: str, path: str
) -> None:
    client = await RawHTTP.open(tls_daemon.port, get_request(path), tls=True)
    await subscribed(tls_daemon.broker, "c", 1)
    (held,) = tls_daemon.registry.connections[transport]
    mid = (await tls_daemon.broker.publish("c", {"n": 1})).id
    await client.contains(mid.encode())
    status, headers, _ = split_response(client.data)
    assert status == b"HTTP/1.1 200 OK"
    assert headers["transfer-encoding"] == "chunked"
    client.abort()
    await held.when_ended()
    assert tls_daemon.broker.subscribers("c") == 0
    assert tls_daemon.registry.count(transport) == 0


@pytest_twisted.ensureDeferred
async def test_stream_over_tls_ends_with_the_last_chunk_when_the_channel_goes(
    tls_daemon: Any,
) -> None:
    client = await RawHTTP.open(tls_daemon.port, get_request("/channels/c/events"), tls=True)
    await subscribed(tls_daemon.broker, "c", 1)
    tls_daemon.broker.delete("c")
    await client.contains(b"0\r\n\r\n")
    assert b"event: closed" in client.data
    with pytest.raises(AssertionError, match="ended before condition"):
        await client.until(lambda _: False)  # fails only once the server closed the connection
    assert client.ended
