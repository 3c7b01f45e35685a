"""Where and how to reach an OpenAI(-compatible) or Azure OpenAI service, through the official ``openai`` SDK.

The SDK brings what a hand-written client lacked: retries with backoff on 408/409/429/5xx (honouring
``Retry-After``), typed errors, the standard environment (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, proxies from
``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``) and Azure OpenAI. Every backend that uses it (chat, speech, Realtime)
turns the SDK's errors into its own error type with ``describe``, a message fit for a user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Self

import httpx2
import openai

# A local OpenAI-compatible server needs no key, but the SDK refuses to start without one.
NO_KEY = "no-key"


@dataclass(frozen=True)
class OpenAIEndpoint:
    """``base_url`` includes the API version (``https://api.openai.com/v1``); None: ``OPENAI_BASE_URL`` or
    OpenAI's. With ``azure_endpoint`` (``https://NAME.openai.azure.com``) the Azure client is used, with
    ``api_version``; model names are then deployment names, and the key defaults to ``AZURE_OPENAI_API_KEY``.
    ``read_timeout`` bounds the gap between two received pieces, not a whole streamed answer."""

    base_url: str | None = None
    api_key: str | None = None
    azure_endpoint: str | None = None
    api_version: str | None = None
    max_retries: int = 2
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def client(self, *, websocket_base_url: str | None = None) -> openai.AsyncOpenAI:
        timeout = httpx2.Timeout(self.read_timeout, connect=self.connect_timeout)
        if self.azure_endpoint:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=self.azure_endpoint,
                api_version=self.api_version,
                api_key=self.api_key or os.environ.get("AZURE_OPENAI_API_KEY") or NO_KEY,
                websocket_base_url=websocket_base_url,
                timeout=timeout,
                max_retries=self.max_retries,
            )
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            websocket_base_url=websocket_base_url,
            api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or NO_KEY,
            timeout=timeout,
            max_retries=self.max_retries,
        )


class OpenAIBackend:
    """A backend that owns one SDK client (its connection pool), closed with ``aclose()`` or ``async with``."""

    def __init__(self, endpoint: OpenAIEndpoint) -> None:
        self.endpoint = endpoint
        self._client = endpoint.client()

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def describe(error: openai.OpenAIError) -> str:
    """One line for a user: the HTTP status and the service's own message, or what went wrong on the way."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {_service_message(error)}"
    if isinstance(error, openai.APITimeoutError):
        return f"timed out talking to {_origin(error.request)}"
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__
        return f"cannot connect to {_origin(error.request)} ({cause or error.message})"
    return str(error) or type(error).__name__


_MAX_MESSAGE = 200


def _service_message(error: openai.APIStatusError) -> str:
    body = error.body
    message = body.get("message") if isinstance(body, dict) else body if isinstance(body, str) else None
    text = str(message or error.response.reason_phrase or "").strip()
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _origin(request: httpx2.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}"
