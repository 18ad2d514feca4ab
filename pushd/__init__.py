"""pushd: one Twisted daemon that pushes channels to clients over poll,
long-poll, HTTP streaming, Server-Sent Events and WebSocket."""

__version__ = "0.1.0"
