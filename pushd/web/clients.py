"""Who a request comes from, and what it may do without a token.

The client's address is the peer's, unless the peer is a trusted proxy
(``trusted_proxies``: addresses or CIDR blocks); then it is the rightmost
address in ``X-Forwarded-For`` that is not itself a trusted proxy. A request
that carries a proxy header (``Forwarded``, ``X-Forwarded-For``,
``X-Real-IP``) from a peer that is not trusted never counts as loopback:
behind nginx every request arrives from 127.0.0.1, and only the proxy's
header says who really sent it.

With no key configured every channel is readable, and the backend
operations (publishing over HTTP, batch or WebSocket frames; ``GET`` and
``DELETE /channels/{ch}``; ``/metrics``; ``/status``) are answered for
loopback clients only: :func:`local_only` is the daemon's authorization
hook (:attr:`pushd.web.context.Context.authorize`) until tokens come.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from pushd.config import ConfigError
from pushd.errors import PushdError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=1024)
def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP literal) is this machine: 127.0.0.0/8, ::1, or
    127.x.y.z mapped into IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def peer_of(who: Any) -> str:
    """The peer's address as text: pushd's own server and WebSocket
    connections know it (``peer_host``); a twisted.web request is asked."""
    known = getattr(who, "peer_host", None)
    if known is not None:
        return known  # type: ignore[no-any-return]
    return str(getattr(who.getClientAddress(), "host", ""))


def proxied(who: Any) -> bool:
    """Whether ``who`` carries a header in which a proxy names its client.

    pushd's own server notes it while parsing (``proxied``); a twisted.web
    request or a WebSocket handshake is asked for each header."""
    known = getattr(who, "proxied", None)
    if known is not None:
        return known  # type: ignore[no-any-return]
    get = who.getHeader
    return (
        get(b"forwarded") is not None
        or get(b"x-forwarded-for") is not None
        or get(b"x-real-ip") is not None
    )


class Clients:
    """The ``trusted_proxies`` policy: a request's client address, and
    whether the request comes from this machine."""

    def __init__(self, trusted: list[str]) -> None:
        networks: list[Network] = []
        for entry in trusted:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"trusted_proxies: {entry!r} is not an address or a CIDR block"
                ) from None
        self.networks = tuple(networks)
        self._trusted: dict[str, bool] = {}

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy (judged once per address)."""
        known = self._trusted.get(address)
        if known is None:
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            known = self._trusted[address] = self._in_networks(address)
        return known

    def _in_networks(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        ip = mapped or ip
        return any(ip.version == net.version and ip in net for net in self.networks)

    def address(self, who: Any) -> str:
        """The client's address (see the module's docstring)."""
        peer = peer_of(who)
        if not self.trusts(peer):
            return peer
        return self.forwarded(peer, who.getHeader(b"x-forwarded-for"))

    def forwarded(self, peer: str, forwarded: bytes | None) -> str:
        """The client a trusted proxy ``peer`` names in ``X-Forwarded-For``
        (the value given): the rightmost hop that is not itself trusted."""
        if forwarded is None:
            return peer
        hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

    def is_local(self, who: Any) -> bool:
        """Whether ``who`` comes from this machine, through trusted proxies only."""
        peer = peer_of(who)
        if not self.trusts(peer):
            # "" is a unix socket's peer: a process on this machine
            return (peer == "" or is_loopback(peer)) and not proxied(who)
        return is_loopback(self.address(who))


BACKEND = {
    "publish": "publishing",
    "manage": "reading or deleting a channel's state",
    "admin": "this page",
}


def local_only(clients: Clients) -> Any:
    """The authorization hook while no key is configured: every channel is
    readable; backend operations only for loopback clients (403 otherwise,
    naming the settings that change it)."""

    def authorize(who: object, action: str, channel: str) -> None:
        if action == "subscribe" or clients.is_local(who):
            return
        what = BACKEND.get(action, action)
        raise PushdError(
            403,
            "forbidden",
            f"{what} is allowed for loopback clients only; behind a proxy on this "
            "machine list it in trusted_proxies",
        )

    return authorize
