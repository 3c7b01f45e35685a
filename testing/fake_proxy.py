"""A forward HTTP proxy on 127.0.0.1 (absolute-form requests and CONNECT tunnels) that records what went through it:
to check that clients take HTTP_PROXY / HTTPS_PROXY from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[str]) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    line, rest = head.split(b"\r\n", 1)
    method, target, version = line.decode("latin-1").split(" ", 2)
    seen.append(f"{method} {target}")
    if method == "CONNECT":
        host, port = target.rsplit(":", 1)
        first = b""
    else:  # absolute-form: the origin gets the origin-form
        url = urlsplit(target)
        host, port = url.hostname or "", str(url.port or 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        first = f"{method} {path} {version}\r\n".encode("latin-1") + rest
    try:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
        writer.close()
        return
    if method == "CONNECT":
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    else:
        up_writer.write(first)
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """Yields (proxy URL, the request lines it forwarded: "POST http://..." or "CONNECT host:port")."""
    seen: list[str] = []
    tasks: set[asyncio.Task] = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_serve_client(reader, writer, seen))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
