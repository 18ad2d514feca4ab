"""Settings: defaults, the TOML file, then the command line, in that order.

Every setting has one typed home here. The file is checked strictly (unknown
keys and wrong types are errors that name the key) because a typo that is
silently ignored is worse than one that stops the daemon at start-up.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any, get_type_hints


class ConfigError(Exception):
    """A setting that cannot be used; the message names it."""


@dataclass
class History:
    size: int = 1000  # messages kept per channel
    ttl: float = 3600.0  # seconds a message is kept
    # all channels' history together, bytes (each message weighs its JSON object);
    # past it the oldest messages of the whole broker go first
    max_bytes: int = 256 * 1024 * 1024


@dataclass
class Limits:
    message_size: int = 64 * 1024  # largest accepted body or frame, bytes
    batch_size: int = 1024 * 1024  # largest POST /publish body, bytes
    queue: int = 1024 * 1024  # bytes queued for one slow connection before it is closed
    max_connections: int = 0  # open TCP connections in total; 0 = unlimited
    max_connections_per_address: int = 0  # open TCP connections from one client address
    max_channels: int = 0  # channels a publish may create; 0 = unlimited
    retry_after: int = 5  # seconds, the Retry-After of a 503 sent at a limit
    publish_rate: float = 0.0  # publishes a second per token sub, else per address; 0 = none
    connect_rate: float = 0.0  # new connections a second per client address; 0 = none


@dataclass
class Http:
    """The HTTP/1.1 server's own bounds (pushd.server); body sizes are [limits]'."""

    max_url: int = 8192  # request target bytes (414 beyond)
    max_header_bytes: int = 16384  # header names and values together (431 beyond)
    max_headers: int = 100  # header lines (431 beyond)
    max_pipelined: int = 16  # parsed requests waiting behind the one being answered
    header_timeout: float = 10.0  # seconds from accept (or a first byte) to the end of headers
    body_timeout: float = 30.0  # seconds for a whole request body
    idle_timeout: float = 75.0  # seconds a keep-alive connection may wait for its next request


@dataclass
class Poll:
    limit: int = 100  # default messages per answer
    max_limit: int = 1000
    max_bytes: int = 1024 * 1024  # messages per poll/long-poll answer, bytes (at least one)


@dataclass
class Longpoll:
    timeout: float = 30.0  # default hold, seconds
    max_timeout: float = 120.0


@dataclass
class Sse:
    heartbeat: float = 15.0  # seconds between comment lines
    retry: int = 3000  # ms, the reconnect delay sent as `retry:`


@dataclass
class Stream:
    heartbeat: float = 15.0  # seconds between bare newlines
    max_bytes: int = 8 * 1024 * 1024  # a response ends cleanly past this many body bytes


@dataclass
class Websocket:
    publish: bool = False  # accept {"type":"publish"} frames
    deflate: bool = True  # accept permessage-deflate when a client offers it
    ping_interval: float = 20.0  # seconds; 0 turns auto-ping off
    ping_timeout: float = 10.0  # seconds without a pong before the peer is dropped
    max_subscriptions: int = 100  # channels per connection


@dataclass
class Drain:
    timeout: float = 10.0  # seconds SIGTERM waits for subscriptions to end


@dataclass
class Metrics:
    listen: str = ""  # an endpoint for /metrics alone; empty: on the main listener


@dataclass
class Web:
    demo: bool = True  # serve the demo page at /


@dataclass
class AuthKey:
    """One ``[[auth.key]]`` table: a key tokens may be signed with.

    Its algorithm is pinned: a token whose header names another is not tried
    against it, so an RS256 public key can never serve as an HMAC secret.
    """

    alg: str = ""  # HS256/384/512 (a secret) or RS*, PS*, ES*, EdDSA (a public key file)
    secret: str = ""  # an HMAC secret, inline
    secret_file: str = ""  # or read from this file (one trailing newline dropped)
    public_key_file: str = ""  # a PEM public key, for the asymmetric algorithms
    kid: str = ""  # when set, tokens whose header names this kid use this key alone


@dataclass
class Auth:
    """``[auth]``: who may read and publish once keys are configured (pushd.auth)."""

    # channel patterns readable without a token; None: every channel ("*")
    # while no key is configured, none once one is
    public: list[str] | None = None
    cookie: str = "pushd_token"  # the cookie a token may come in
    audience: str = ""  # the `aud` a token must name; "" = not checked
    issuer: str = ""  # the `iss` a token must name; "" = not checked
    grace: float = 30.0  # seconds a WebSocket has to send a new token after expiry
    leeway: float = 5.0  # seconds of clock skew allowed on exp and nbf
    key: list[AuthKey] = field(default_factory=list)

    def public_patterns(self) -> list[str]:
        """``public`` with its default applied."""
        if self.public is not None:
            return self.public
        return [] if self.key else ["*"]


DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
SECTIONS = {
    "history": History,
    "limits": Limits,
    "http": Http,
    "poll": Poll,
    "longpoll": Longpoll,
    "sse": Sse,
    "stream": Stream,
    "websocket": Websocket,
    "drain": Drain,
    "metrics": Metrics,
    "web": Web,
}


@dataclass
class Settings:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    allowed_origins: list[str] = field(default_factory=list)
    # Host names a loopback client may use besides localhost and loopback
    # addresses (DNS rebinding protection); any port.
    allowed_hosts: list[str] = field(default_factory=list)
    # Peers whose X-Forwarded-For is believed (addresses or CIDR blocks): a
    # proxy on this machine, so its clients are told apart (pushd.web.clients)
    trusted_proxies: list[str] = field(default_factory=list)
    history: History = field(default_factory=History)
    limits: Limits = field(default_factory=Limits)
    http: Http = field(default_factory=Http)
    poll: Poll = field(default_factory=Poll)
    longpoll: Longpoll = field(default_factory=Longpoll)
    sse: Sse = field(default_factory=Sse)
    stream: Stream = field(default_factory=Stream)
    websocket: Websocket = field(default_factory=Websocket)
    drain: Drain = field(default_factory=Drain)
    metrics: Metrics = field(default_factory=Metrics)
    web: Web = field(default_factory=Web)
    auth: Auth = field(default_factory=Auth)
    # "memory" (this process alone) or "redis://[:password@]host:port/db"
    # ("rediss://" for TLS): channels, ids and history shared by every node
    broker: str = "memory"
    broker_timeout: float = 2.0  # seconds a Redis command may take before Redis counts as down
    # pushd processes on this host sharing the listeners (pushd.workers); more than
    # one needs the Redis broker, since the memory broker is one process's alone
    workers: int = 1
    # Each [[source]] table, checked by the source type that owns it. The
    # demo ticker runs unless the file says otherwise (`source = []` for none).
    sources: list[dict[str, Any]] = field(default_factory=lambda: [{"type": "ticker"}])


def _coerce(where: str, value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{where} must not be negative")
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{where} must not be negative")
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind == list[str]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    name = getattr(kind, "__name__", str(kind)).replace("str", "string")
    raise ConfigError(f"{where} must be a {name}, not {value!r}")


def _section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            known = ", ".join(hints)
            raise ConfigError(f"unknown setting [{name}] {key} (known: {known})")
        values[key] = _coerce(f"[{name}] {key}", value, hints[key])
    return cls(**values)


def _auth(table: Any) -> Auth:
    """``[auth]`` and its ``[[auth.key]]`` tables, each key checked like a section."""
    if not isinstance(table, dict):
        raise ConfigError("[auth] must be a table")
    rest = dict(table)
    keys = rest.pop("key", [])
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ConfigError("[auth] key must be a list of [[auth.key]] tables")
    public = rest.pop("public", None)
    auth: Auth = _section("auth", Auth, rest)
    if public is not None:
        auth.public = _coerce("[auth] public", public, list[str])
    auth.key = [_section("auth.key", AuthKey, k) for k in keys]
    return auth


def parse(data: dict[str, Any]) -> Settings:
    """Build Settings from a parsed TOML document."""
    settings = Settings()
    for key, value in data.items():
        if key in SECTIONS:
            setattr(settings, key, _section(key, SECTIONS[key], value))
        elif key in ("listen", "allowed_origins", "allowed_hosts", "trusted_proxies"):
            setattr(settings, key, _coerce(key, value, list[str]))
        elif key == "auth":
            settings.auth = _auth(value)
        elif key == "broker":
            settings.broker = _coerce(key, value, str)
        elif key == "broker_timeout":
            settings.broker_timeout = _coerce(key, value, float)
        elif key == "workers":
            settings.workers = _coerce(key, value, int)
        elif key == "source":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                raise ConfigError("source must be a list of [[source]] tables")
            for i, table in enumerate(value):
                if not isinstance(table.get("type"), str):
                    raise ConfigError(f"[[source]] #{i + 1} needs a type")
            settings.sources = [dict(t) for t in value]
        else:
            raise ConfigError(f"unknown setting {key!r}")
    check(settings)
    return settings


def load(path: str) -> Settings:
    """Read and check the TOML file at ``path``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    try:
        return parse(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check(settings: Settings) -> None:
    """Cross-field rules that a type alone cannot say."""
    if not settings.listen:
        raise ConfigError("listen needs at least one endpoint")
    if settings.history.size < 1:
        raise ConfigError("[history] size must be at least 1")
    if settings.history.ttl <= 0:
        raise ConfigError("[history] ttl must be more than 0 seconds")
    if settings.limits.message_size < 1:
        raise ConfigError("[limits] message_size must be at least 1 byte")
    if settings.history.max_bytes < settings.limits.message_size:
        raise ConfigError("[history] max_bytes must be at least [limits] message_size")
    http = settings.http
    if min(http.max_url, http.max_header_bytes, http.max_headers, http.max_pipelined) < 1:
        raise ConfigError("[http] sizes and counts must be at least 1")
    if min(http.header_timeout, http.body_timeout, http.idle_timeout) <= 0:
        raise ConfigError("[http] timeouts must be more than 0 seconds")
    if settings.poll.limit < 1 or settings.poll.limit > settings.poll.max_limit:
        raise ConfigError("[poll] limit must be between 1 and [poll] max_limit")
    if settings.poll.max_bytes < 1:
        raise ConfigError("[poll] max_bytes must be at least 1 byte")
    if settings.sse.heartbeat <= 0 or settings.stream.heartbeat <= 0:
        raise ConfigError("heartbeat intervals must be more than 0 seconds")
    if settings.broker != "memory":
        from pushd.broker.resp import RedisURL

        try:
            RedisURL(settings.broker)
        except ValueError as e:
            raise ConfigError(f"broker must be \"memory\" or a redis:// URL: {e}") from None
    if settings.broker_timeout <= 0:
        raise ConfigError("broker_timeout must be more than 0 seconds")
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1")
    if settings.workers > 1:
        if settings.broker == "memory":
            raise ConfigError(
                f"workers = {settings.workers} needs the Redis broker (broker = \"redis://...\"): "
                "the memory broker's channels live in one process"
            )
        shared = settings.listen + [settings.metrics.listen] * bool(settings.metrics.listen)
        for endpoint in shared:
            if endpoint.split(":", 1)[0] not in ("tcp", "tcp6", "unix", "ssl", "systemd"):
                raise ConfigError(
                    f"workers > 1 shares tcp:, ssl:, unix: and systemd: listeners only, "
                    f"not {endpoint!r}"
                )
    check_auth(settings.auth)


def check_auth(auth: Auth) -> None:
    """``[auth]``'s rules; each key is loaded (its file read) to be sure it works."""
    if not auth.cookie:
        raise ConfigError("[auth] cookie must name a cookie")
    if auth.public is not None and not auth.key and auth.public != ["*"]:
        raise ConfigError(
            "[auth] public limits reading only once an [[auth.key]] is configured: "
            "add a key, or remove public"
        )
    from pushd.auth import load_keys

    load_keys(auth.key)


def replace(settings: Settings, section: str, **changes: Any) -> None:
    """Apply command-line overrides to one section, keeping the rest."""
    setattr(settings, section, dataclasses.replace(getattr(settings, section), **changes))
