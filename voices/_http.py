"""HTTP plumbing for the network backends that no SDK covers (GPT-SoVITS): one lazily created
aiohttp session per backend object, timeouts that never let a request hang,
and translation of every transport failure into the caller's error type
with a message fit for a user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

_MAX_ERROR_TEXT = 300


def given(**options: Any) -> dict[str, Any]:
    """The optional request fields that were given (not None), so the server's defaults apply to the rest."""
    return {k: v for k, v in options.items() if v is not None}


class HTTPBackend:
    """Owns an aiohttp session; subclasses set ``error_type`` and ``name``."""

    error_type: type[Exception] = RuntimeError
    name = "HTTP service"

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 30.0) -> None:
        # sock_read bounds the gap between two received pieces, not the whole
        # stream, so a long answer is fine but a stalled server is not.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HTTPBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _fail(self, what: str) -> Exception:
        return self.error_type(f"{self.name}: {what}")

    @asynccontextmanager
    async def _request(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request; non-2xx statuses and transport errors (also while
        the caller reads the body) become ``error_type``."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, **kwargs) as resp:
                if resp.status >= 400:
                    raise self._fail(await _describe_status(resp))
                yield resp
        except TimeoutError as e:
            raise self._fail(f"timed out talking to {url}") from e
        except aiohttp.ClientConnectorError as e:
            raise self._fail(f"cannot connect to {url} ({e.os_error or e})") from e
        except aiohttp.ClientPayloadError as e:
            raise self._fail("the response ended unexpectedly") from e
        except aiohttp.ClientError as e:
            raise self._fail(f"request to {url} failed ({e})") from e


async def _describe_status(resp: aiohttp.ClientResponse) -> str:
    try:
        body = (await resp.content.read(_MAX_ERROR_TEXT + 1)).decode("utf-8", "replace").strip()
    except (TimeoutError, aiohttp.ClientError):
        body = ""
    text = f"HTTP {resp.status} {resp.reason or ''}".strip()
    if body and len(body) <= _MAX_ERROR_TEXT:
        text += f": {body}"
    return text
