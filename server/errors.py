"""The one error type the HTTP layer turns into a response: a status code and a message for the user."""
from __future__ import annotations


class ApiError(Exception):
    """A request that cannot be served; `status` is the HTTP status to answer with, the message is shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
