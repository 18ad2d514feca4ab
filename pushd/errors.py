"""One error type for everything a client can get wrong.

Every layer raises :class:`PushdError`; the web layer renders it once, as
``{"error": code, "message": text}`` with ``status``. Keeping the status and
the machine-readable code together means a handler never has to decide how an
error looks on the wire.
"""

from __future__ import annotations

import json


class PushdError(Exception):
    """A client-visible failure with an HTTP status and a stable code."""

    # headers its answer carries (a 401's WWW-Authenticate), set on the
    # instance by the errors that need them
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        """The JSON body every transport uses for this error."""
        return json.dumps(
            {"error": self.code, "message": self.message}, separators=(",", ":")
        ).encode()

    def __repr__(self) -> str:
        return f"PushdError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(code: str, message: str) -> PushdError:
    return PushdError(400, code, message)


class LimitError(PushdError):
    """A 503 at a configured limit, telling the client when to try again."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(503, code, message)
        self.retry_after = retry_after
