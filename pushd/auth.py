"""Tokens: who may read and publish once a key is configured.

A token is a JWT signed with one of the ``[[auth.key]]`` keys. Each key pins
its algorithm: a token is only tried against the keys whose ``alg`` is the
one its header names (or the key its ``kid`` names), and PyJWT is given that
one algorithm. So ``alg: none`` finds no key, and an HS256 token "signed"
with an RS256 public key finds no HMAC key made of it (an HMAC key is always
a configured secret, never a public key file).

Claims: ``exp`` and ``nbf`` (checked here, on the daemon's clock, with
``[auth] leeway``), ``aud`` / ``iss`` when ``[auth] audience`` / ``issuer``
are set, ``sub``, and ``"pushd": {"subscribe": [...], "publish": [...],
"admin": bool}``, channel patterns in which ``*`` matches any run of
characters. The publish right also covers ``GET``/``DELETE`` of a channel
("manage"); ``admin`` covers ``/metrics`` and ``/status``.

A token comes from ``Authorization: Bearer``, then ``?token=``, then the
cookie ``[auth] cookie``; a WebSocket connection keeps the one of its
handshake (``bearer``) until an ``auth`` frame replaces it. A request that
presents a token is judged by its token alone; without one it may read the
``[auth] public`` channels, and the backend operations only from a loopback
client (:meth:`pushd.web.clients.Clients.is_local`).

Each distinct token string is verified once: its grants are kept (a bounded
cache) until it expires, so a stream of requests with one token costs a
dictionary lookup and a pattern match each. With no key configured none of
this runs: the daemon keeps :func:`pushd.web.clients.local_only`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from pushd.config import Auth, AuthKey, ConfigError
from pushd.errors import PushdError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from pushd.web.clients import Clients

# RFC 7518 3.2: an HMAC key at least as long as the hash's output
HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC: dict[str, tuple[type, ...]] = {
    **{f"RS{n}": (rsa.RSAPublicKey,) for n in (256, 384, 512)},
    **{f"PS{n}": (rsa.RSAPublicKey,) for n in (256, 384, 512)},
    **{f"ES{n}": (ec.EllipticCurvePublicKey,) for n in (256, 384, 512)},
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
CACHE_SIZE = 10_000  # distinct tokens whose grants are kept


class Unauthorized(PushdError):
    """401: a token is needed and none, or no valid one, was presented."""

    def __init__(self, message: str, invalid: bool = True) -> None:
        super().__init__(401, "unauthorized", message)
        challenge = b'Bearer realm="pushd"'
        if invalid:
            challenge += b', error="invalid_token"'
        self.headers = ((b"WWW-Authenticate", challenge),)


def forbidden(message: str) -> PushdError:
    return PushdError(403, "forbidden", message)


# -- keys -----------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """A configured key, ready for PyJWT."""

    alg: str
    key: Any  # the HMAC secret (bytes) or the public key object
    kid: str


def load_keys(tables: list[AuthKey]) -> list[Key]:
    """Every ``[[auth.key]]`` as a :class:`Key`, or a ConfigError naming the problem."""
    keys = []
    kids: set[str] = set()
    for i, table in enumerate(tables):
        where = f"[[auth.key]] #{i + 1}"
        keys.append(_load_key(where, table))
        if table.kid:
            if table.kid in kids:
                raise ConfigError(f"{where}: kid {table.kid!r} is used twice")
            kids.add(table.kid)
    return keys


def _load_key(where: str, t: AuthKey) -> Key:
    alg = t.alg
    if alg.lower() == "none":
        raise ConfigError(f"{where}: alg none is refused (tokens must be signed)")
    if alg in HMAC:
        if t.public_key_file:
            raise ConfigError(
                f"{where}: {alg} is an HMAC algorithm and takes a secret or secret_file, "
                "never a public key (an attacker could sign with the public key)"
            )
        if bool(t.secret) == bool(t.secret_file):
            raise ConfigError(f"{where}: {alg} needs exactly one of secret and secret_file")
        secret = t.secret.encode() if t.secret else _read(where, t.secret_file)
        if t.secret_file:
            secret = secret.removesuffix(b"\n").removesuffix(b"\r")
        if len(secret) < HMAC[alg]:
            raise ConfigError(f"{where}: an {alg} secret needs at least {HMAC[alg]} bytes")
        return Key(alg, secret, t.kid)
    if alg in ASYMMETRIC:
        if t.secret or t.secret_file:
            raise ConfigError(f"{where}: {alg} takes a public_key_file, not a secret")
        if not t.public_key_file:
            raise ConfigError(f"{where}: {alg} needs a public_key_file")
        try:
            public = load_pem_public_key(_read(where, t.public_key_file))
        except ValueError:
            raise ConfigError(
                f"{where}: {t.public_key_file} is not a PEM public key"
            ) from None
        if not isinstance(public, ASYMMETRIC[alg]):
            raise ConfigError(f"{where}: {t.public_key_file} is not a key for {alg}")
        curve = CURVES.get(alg)
        if curve is not None and public.curve.name != curve:  # type: ignore[attr-defined]
            raise ConfigError(f"{where}: {alg} needs a key on the curve {curve}")
        return Key(alg, public, t.kid)
    known = ", ".join([*HMAC, *ASYMMETRIC])
    raise ConfigError(f"{where}: alg must be one of {known}, not {alg!r}")


def _read(where: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None


# -- patterns and grants ----------------------------------------------------------
@lru_cache(maxsize=1024)
def patterns(names: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a channel matches any of ``names`` (``*``: any run of characters).

    Compiled once per distinct list: many tokens carry the same patterns.
    """
    if "*" in names:
        return lambda channel: True
    if not names:
        return lambda channel: False
    exact = frozenset(n for n in names if "*" not in n)
    wild = [n for n in names if "*" in n]
    if not wild:
        return exact.__contains__
    regex = re.compile("|".join(re.escape(n).replace(r"\*", ".*") for n in wild), re.DOTALL)
    fullmatch = regex.fullmatch
    return lambda channel: channel in exact or fullmatch(channel) is not None


@dataclass(frozen=True)
class Grants:
    """What one verified token allows."""

    sub: str | None
    exp: float | None
    subscribe: Callable[[str], bool]
    publish: Callable[[str], bool]
    admin: bool

    def allows(self, action: str, channel: str) -> bool:
        if action == "subscribe":
            return self.subscribe(channel)
        if action in ("publish", "manage"):
            return self.publish(channel)
        return action == "admin" and self.admin


def _pattern_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Unauthorized(f"the token's pushd.{name} must be a list of channel patterns")
    return tuple(value)


def _time(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthorized(f"the token's {name} must be a number (Unix seconds)")
    return float(value)


# -- verifying --------------------------------------------------------------------
class Tokens:
    """Verifies tokens against the configured keys; keeps what each grants."""

    def __init__(self, auth: Auth, clock: IReactorTime) -> None:
        self.keys = load_keys(auth.key)
        self.by_kid = {k.kid: k for k in self.keys if k.kid}
        self.clock = clock
        self.leeway = auth.leeway
        self.audience = auth.audience or None
        self.issuer = auth.issuer or None
        self.cookie = auth.cookie.encode()
        self.public = patterns(tuple(auth.public_patterns()))
        self._options = {
            "verify_exp": False,  # checked in grants() on our clock, the cache too
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
        }
        self._cache: dict[str, Grants] = {}

    def grants(self, token: str) -> Grants:
        """What ``token`` allows, or :class:`Unauthorized` saying why not."""
        known = self._cache.get(token)
        if known is None:
            known = self._verify(token)
        exp = known.exp
        if exp is not None and self.clock.seconds() > exp + self.leeway:
            self._cache.pop(token, None)
            raise Unauthorized("the token has expired")
        return known

    def _verify(self, token: str) -> Grants:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if kid is not None:
            key = self.by_kid.get(kid) if isinstance(kid, str) else None
            candidates = [key] if key is not None and key.alg == alg else []
        else:
            candidates = [k for k in self.keys if k.alg == alg]
        if not candidates:
            raise Unauthorized(f"no key is configured for this token's alg {str(alg)[:20]!r}"
                               + (f" and kid {str(kid)[:40]!r}" if kid is not None else ""))
        payload = None
        for key in candidates:
            try:
                payload = jwt.decode(
                    token, key.key, algorithms=[key.alg], options=self._options,  # type: ignore[arg-type]
                    audience=self.audience, issuer=self.issuer,
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise Unauthorized("the token is not for this audience") from None
            except jwt.InvalidIssuerError:
                raise Unauthorized("the token is not from this issuer") from None
            except jwt.InvalidTokenError as e:
                raise Unauthorized(f"the token is not valid: {e}") from None
        if payload is None:
            raise Unauthorized("the token's signature does not verify")
        return self._remember(token, payload)

    def _remember(self, token: str, payload: dict[str, Any]) -> Grants:
        exp, nbf = _time(payload, "exp"), _time(payload, "nbf")
        now = self.clock.seconds()
        if nbf is not None and now + self.leeway < nbf:
            raise Unauthorized("the token is not valid yet (nbf)")  # not kept: it will be
        claims = payload.get("pushd", {})
        if not isinstance(claims, dict):
            raise Unauthorized("the token's pushd claim must be an object")
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise Unauthorized("the token's pushd.admin must be true or false")
        sub = payload.get("sub")
        grants = Grants(
            sub=sub if isinstance(sub, str) else None,
            exp=exp,
            subscribe=patterns(_pattern_list(claims, "subscribe")),
            publish=patterns(_pattern_list(claims, "publish")),
            admin=admin,
        )
        if exp is None or now <= exp + self.leeway:
            cache = self._cache
            if len(cache) >= CACHE_SIZE:
                del cache[next(iter(cache))]  # the oldest
            cache[token] = grants
        return grants

    def expires(self, who: Any) -> float | None:
        """When the token ``who`` presents stops being valid (``exp`` plus the
        leeway, on the daemon's clock), or None: no token, or no ``exp``."""
        token = self.token_of(who)
        if token is None:
            return None
        exp = self.grants(token).exp
        return None if exp is None else exp + self.leeway

    # -- where a token comes from ---------------------------------------------------
    def token_of(self, who: Any) -> str | None:
        """The token ``who`` presents: a WebSocket connection's own, else the
        request's ``Authorization: Bearer``, ``?token=`` or cookie."""
        if hasattr(who, "bearer"):  # a WebSocket connection
            return who.bearer  # type: ignore[no-any-return]
        return self.from_request(who.getHeader, getattr(who, "args", {}).get(b"token"))

    def from_request(
        self, get: Callable[[bytes], bytes | None], query: list[bytes] | None
    ) -> str | None:
        """The token of a request's headers (``get``) and ``?token=`` values."""
        authorization = get(b"authorization")
        if authorization:
            scheme, _, value = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer" and value.strip():
                return value.strip().decode("latin-1")
        if query and query[0]:
            return query[0].decode("latin-1")
        cookies = get(b"cookie")
        if cookies and self.cookie in cookies:
            for part in cookies.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name == self.cookie and value:
                    return value.strip(b'"').decode("latin-1")
        return None

    # -- the authorization hook ------------------------------------------------------
    def authorizer(self, clients: Clients) -> Callable[[object, str, str], None]:
        """The hook (:attr:`pushd.web.context.Context.authorize`) once keys are set."""

        def authorize(who: object, action: str, channel: str) -> None:
            token = self.token_of(who)
            if token is None:
                if action == "subscribe":
                    if self.public(channel):
                        return
                    raise Unauthorized(f"reading {channel} needs a token", invalid=False)
                if clients.is_local(who):
                    return
                raise Unauthorized(
                    "this needs a token (or a loopback client without one)", invalid=False
                )
            grants = self.grants(token)
            if grants.allows(action, channel):
                return
            if action == "subscribe" and self.public(channel):
                return
            what = "this page" if action == "admin" else f"{action} on {channel}"
            raise forbidden(f"the token does not allow {what}")

        return authorize
