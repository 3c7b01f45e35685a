"""The server's domain errors and the one table that gives each its HTTP status.

Code raises the error that names the condition where the condition is known (a malformed field, a session that is
gone, a queue that is full, a damaged avatar or action clip on the server's disk); the api_errors middleware answers
every route's error with ``status_of`` and the message. No built-in exception (ValueError, RuntimeError, ...) picks
a status: one that reaches the middleware is a bug, logged and answered 500.
"""

from __future__ import annotations

from musetalk.avatar import AvatarError, AvatarNotFoundError, InvalidAvatarIdError

INTERNAL = 500  # the answer to an error with no status in HTTP_STATUS: a bug


class ApiError(Exception):
    """A request that cannot be served; the message is shown to the client as is."""

    @property
    def status(self) -> int:
        return status_of(self) or INTERNAL


class BadRequest(ApiError):
    """The request is wrong: a missing, malformed or out-of-range field, an unreadable upload."""


class Forbidden(ApiError):
    """The client may not use this route (the admin API from beyond loopback)."""


class NotFound(ApiError):
    """What the request names does not exist (a session, an avatar, a task, a recording)."""


class Conflict(ApiError):
    """The request clashes with the current state: already recording, an avatar in use or being prepared."""


class TooLarge(ApiError):
    """A body, file, text or video beyond the server's limit."""


class TooBusy(ApiError):
    """A per-session or per-server queue is full; the client may retry later."""


class ServerFault(ApiError):
    """Something on the server's side is broken: a damaged file on its disk, a failed write. Not the client's fault."""


class Unavailable(ApiError):
    """The server cannot take this now: every session slot is taken, or it is shutting down."""


# The one place statuses are chosen. status_of takes the entry of the most specific class of an error, so a
# subclass may answer differently from its base (a missing avatar is 404, a damaged one 500).
HTTP_STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooBusy: 429,
    ServerFault: 500,
    Unavailable: 503,
    # musetalk's own errors, which know nothing of HTTP:
    InvalidAvatarIdError: 400,  # an avatar id that is not a plain folder name, as given by the client
    AvatarNotFoundError: 404,
    AvatarError: 500,  # an avatar or action clip on the server's disk that cannot be used
}


def status_of(error: BaseException) -> int | None:
    """The HTTP status that answers `error`: that of its most specific class in HTTP_STATUS; None if it has none."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return None
