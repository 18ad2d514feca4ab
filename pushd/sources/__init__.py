"""Sources feed the broker. Each is a Twisted service that only calls
``broker.publish``; the daemon starts and stops them with everything else.

``build`` maps a ``[[source]]`` table's ``type`` to its module by name, so a
daemon that uses no Redis source never imports the Redis client.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.application.service import IService

from pushd.broker.interface import Broker
from pushd.config import ConfigError

TYPES = {
    "ticker": "pushd.sources.ticker",
    "exec": "pushd.sources.exec",
    "file": "pushd.sources.file",
    "http": "pushd.sources.http",
    "redis": "pushd.sources.redis",
}


def build(table: dict[str, Any], broker: Broker, reactor: Any) -> IService:
    """A source service from one ``[[source]]`` table; ConfigError if unusable."""
    kind = table.get("type")
    if kind not in TYPES:
        raise ConfigError(
            f"[[source]] type {kind!r} is not one of: {', '.join(sorted(TYPES))}"
        )
    module = importlib.import_module(TYPES[kind])
    source: IService = module.from_config(table, broker, reactor)
    return source
