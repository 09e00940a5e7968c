"""Serves the local store over HTTP so ``video_url`` is a real URL a browser can play.

Paths mirror Supabase's public objects (``/storage/v1/object/public/{bucket}/{key}``);
aiohttp's FileResponse streams from disk and answers Range requests, which browsers
need to seek in a video.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from service.storage.base import PUBLIC_PREFIX, StorageError
from service.storage.local import object_path
from service.web.serving import serve

mimetypes.add_type("video/mp4", ".mp4")
mimetypes.add_type("image/webp", ".webp")


def storage_app(root: Path) -> web.Application:
    """An aiohttp app that serves ``root`` read-only."""

    async def get_object(request: web.Request) -> web.StreamResponse:
        try:
            path = object_path(root, request.match_info["bucket"], request.match_info["key"])
        except StorageError as err:
            raise web.HTTPBadRequest(text=str(err)) from err
        if not path.is_file():
            raise web.HTTPNotFound(text="object not found")
        response = web.FileResponse(path, chunk_size=256 * 1024)
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    app = web.Application()
    app.router.add_get(PUBLIC_PREFIX + "/{bucket}/{key:.+}", get_object)
    return app


class StorageServer:
    """Runs ``storage_app`` on a port."""

    def __init__(self, root: Path) -> None:
        self.app = storage_app(root)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port``; port 0 picks a free one."""
        self._runner, self.port = await serve(self.app, host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
