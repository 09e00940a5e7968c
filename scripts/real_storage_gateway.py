"""A small gateway in front of supabase/storage, as Supabase's own (Kong) routes it.

    http://HOST:PORT/storage/v1/<rest>  ->  UPSTREAM/<rest>

It strips ``/storage/v1``, adds ``X-Forwarded-Prefix: /storage/v1`` (and the usual
``X-Forwarded-Host/Port/Proto/For``) so that the server, started with
``REQUEST_ALLOW_X_FORWARDED_PATH=true``, hands out upload URLs through the gateway, and
answers any other path with 404 ``{"message": "no Route matched with those values"}``.

Why the upstream side is httpx's *blocking* client in threads: the TUS server answers
some PATCHes before reading their body (409 Upload-Offset conflict, 409 The resource
already exists, 403, 413) and closes the connection; a client still writing a 6 MiB
body then gets EPIPE. A blocking socket can still read the answer after that; asyncio
transports (aiohttp's and httpx's async clients) drop it. So through this gateway a
client sees the real answer, as through Supabase's; directly, an asyncio client sees a
dropped connection (``tests/test_storage_wire.py`` checks both).

Run by ``scripts/real-storage.sh up``; settings from the environment: GATEWAY_HOST,
GATEWAY_PORT, UPSTREAM.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
from aiohttp import web

PREFIX = "/storage/v1"
UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:54325").rstrip("/")
HOST = os.environ.get("GATEWAY_HOST", "127.0.0.1")
PORT = int(os.environ.get("GATEWAY_PORT", "54321"))
HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
}
POOL: web.AppKey[ThreadPoolExecutor] = web.AppKey("pool")
CLIENT: web.AppKey[httpx.Client] = web.AppKey("client")


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)


async def handle(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    path = request.raw_path
    if path == PREFIX or path.startswith(PREFIX + "?"):
        rest = "/" + path[len(PREFIX) :]
    elif path.startswith(PREFIX + "/"):
        rest = path[len(PREFIX) :]
    else:
        return web.json_response({"message": "no Route matched with those values"}, status=404)
    host = request.headers.get("Host", f"{HOST}:{PORT}")
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
    headers += [
        ("Host", host),
        ("X-Forwarded-Prefix", PREFIX),
        ("X-Forwarded-Host", host.split(":")[0]),
        ("X-Forwarded-Port", host.split(":")[1] if ":" in host else "80"),
        ("X-Forwarded-Proto", request.scheme),
        ("X-Forwarded-For", request.remote or "127.0.0.1"),
    ]
    loop = asyncio.get_running_loop()
    pool = request.app[POOL]

    def body() -> Iterator[bytes]:  # in the worker thread: pulls from the client
        while chunk := asyncio.run_coroutine_threadsafe(request.content.readany(), loop).result():
            yield chunk

    client = request.app[CLIENT]
    upstream = client.build_request(
        request.method,
        UPSTREAM + rest,
        headers=headers,
        content=body() if request.body_exists else None,
    )
    for name in ("accept", "accept-encoding", "user-agent"):  # httpx's, not the client's
        if name not in request.headers:
            del upstream.headers[name]
    try:
        answer = await loop.run_in_executor(pool, lambda: client.send(upstream, stream=True))
    except httpx.HTTPError as err:
        log(f"{request.method} {path} -> upstream error {type(err).__name__}: {err}")
        return web.json_response({"message": f"bad gateway: {type(err).__name__}"}, status=502)
    try:
        response = web.StreamResponse(status=answer.status_code, reason=answer.reason_phrase)
        for name, value in answer.headers.multi_items():
            if name.lower() not in HOP:
                response.headers.add(name, value)
        await response.prepare(request)
        if request.method != "HEAD":
            chunks = answer.iter_raw(256 * 1024)
            while (chunk := await loop.run_in_executor(pool, next, chunks, None)) is not None:
                await response.write(chunk)
        await response.write_eof()
    finally:
        await loop.run_in_executor(pool, answer.close)
    elapsed = int((time.monotonic() - started) * 1000)
    log(f"{request.method} {path} -> {answer.status_code} {elapsed}ms")
    return response


async def on_startup(app: web.Application) -> None:
    app[POOL] = ThreadPoolExecutor(max_workers=64)
    app[CLIENT] = httpx.Client(
        timeout=httpx.Timeout(None, connect=10.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
    )


async def on_cleanup(app: web.Application) -> None:
    app[CLIENT].close()
    app[POOL].shutdown(wait=False, cancel_futures=True)


def main() -> None:
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    log(f"gateway on http://{HOST}:{PORT}{PREFIX}/* -> {UPSTREAM}")
    web.run_app(app, host=HOST, port=PORT, access_log=None, print=None)


if __name__ == "__main__":
    main()
