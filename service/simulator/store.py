"""The simulator's jobs, uploaded references and rendered assets.

Nothing runs in the background: a job's status is derived from its ``created_at``, the
configured timings and an injectable clock, so tests move time instead of sleeping and
a restarted simulator (``state_dir``) needs only the job records.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from .config import SimulatorConfig
from .errors import ApiError
from .media import render_mp4, render_spritesheet, render_thumbnail

__all__ = ["VARIANTS", "CreatedVideo", "Job", "VideoStore"]


class _Renderer(Protocol):
    def __call__(
        self,
        width: int,
        height: int,
        seconds: int,
        *,
        prompt: str,
        reference: bytes | None,
        seed: str,
    ) -> bytes: ...


# variant -> (content type, file suffix in state_dir, renderer)
VARIANTS: dict[str, tuple[str, str, _Renderer]] = {
    "video": ("video/mp4", "mp4", render_mp4),
    "thumbnail": ("image/webp", "webp", render_thumbnail),
    "spritesheet": ("image/jpeg", "jpg", render_spritesheet),
}


@dataclass
class Job:
    """The persisted record of one video; its status is derived from it, the config and clock."""

    id: str
    seq: int  # creation order; the clock may not move between two creates
    model: str
    prompt: str
    size: str
    seconds: str
    created_at: float
    has_reference: bool
    error: dict[str, str] | None = None  # set at create time by a "generate" FailureRule
    deleted: bool = False  # kept as a tombstone so list cursors pointing at it still work

    @property
    def dimensions(self) -> tuple[int, int]:
        width, height = self.size.split("x")
        return int(width), int(height)

    def video(self, config: SimulatorConfig) -> dict[str, Any]:
        """The ``Video`` object as of ``config.clock()``."""
        now = config.clock()
        started = self.created_at + config.queue_seconds
        finished = started + config.generation_seconds
        status, progress, completed_at, expires_at = "queued", 0, None, None
        if now >= finished and self.error is not None:
            status = "failed"
        elif now >= finished:
            status, progress, completed_at = "completed", 100, int(finished)
            expires_at = int(finished + config.expires_after_seconds)
        elif now >= started:
            status = "in_progress"
            progress = min(99, int(100 * (now - started) / config.generation_seconds))
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
            "created_at": int(self.created_at),
            "completed_at": completed_at,
            "expires_at": expires_at,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
            "remixed_from_video_id": None,
            "error": self.error if status == "failed" else None,
        }


class CreatedVideo(NamedTuple):
    """What a test may assert about one accepted ``POST /v1/videos``."""

    video_id: str
    model: str
    size: str
    seconds: str
    has_reference: bool  # an image file was uploaded (a URL/file_id reference is ignored)
    idempotency_key: str | None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via rename so a crash never leaves a half-written record behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class VideoStore:
    """Jobs, uploaded references and rendered assets, optionally persisted in ``state_dir``.

    Layout: ``<id>.json`` (the Job), ``<id>.reference`` and ``<id>.<variant>.<suffix>``.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.jobs: dict[str, Job] = {}  # in creation order
        self.created: list[CreatedVideo] = []
        self._references: dict[str, bytes] = {}
        self._assets: dict[tuple[str, str], bytes] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            records = [json.loads(p.read_text()) for p in config.state_dir.glob("*.json")]
            for record in sorted(records, key=lambda r: int(r["seq"])):
                self.jobs[record["id"]] = Job(**record)

    def get(self, video_id: str) -> Job:
        """The live job ``video_id``, else a 404."""
        job = self.jobs.get(video_id)
        if job is None or job.deleted:
            raise ApiError(404, f"Video with id '{video_id}' not found.", param="video_id")
        return job

    async def add(
        self,
        *,
        model: str,
        prompt: str,
        size: str,
        seconds: str,
        error: dict[str, str] | None,
        reference: bytes | None,
        idempotency_key: str | None,
    ) -> Job:
        """Create a job as of now."""
        job = Job(
            id=f"video_{uuid.uuid4().hex}",
            seq=len(self.jobs) + 1,  # tombstones are never removed, so this only grows
            model=model,
            prompt=prompt,
            size=size,
            seconds=seconds,
            created_at=self.config.clock(),
            has_reference=reference is not None,
            error=error,
        )
        self.jobs[job.id] = job
        if reference is not None:
            self._references[job.id] = reference
        await asyncio.to_thread(self._persist, job, reference)
        self.created.append(
            CreatedVideo(job.id, model, size, seconds, job.has_reference, idempotency_key)
        )
        return job

    async def delete(self, job: Job) -> None:
        """Tombstone the job and drop its reference and assets, in memory and on disk."""
        job.deleted = True
        self._references.pop(job.id, None)
        for variant in VARIANTS:
            self._assets.pop((job.id, variant), None)
        await asyncio.to_thread(self._persist, job, None)

    def reference_for(self, video_id: str) -> bytes | None:
        """The image uploaded with a job, if any (also after a restart with ``state_dir``)."""
        if video_id in self._references:
            return self._references[video_id]
        path = self._path(f"{video_id}.reference")
        return path.read_bytes() if path is not None and path.exists() else None

    async def asset(self, job: Job, variant: str) -> bytes:
        """Render ``variant`` once per job, off the event loop, then serve it from the cache."""
        key = (job.id, variant)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._assets:
                return self._assets[key]
            data = await asyncio.to_thread(self._load_or_render, job, variant)
            if self.config.state_dir is None:
                # Only without a disk cache: a long-running simulator must not keep
                # every video it ever rendered in memory.
                self._assets[key] = data
            return data

    def _load_or_render(self, job: Job, variant: str) -> bytes:
        _, suffix, render = VARIANTS[variant]
        path = self._path(f"{job.id}.{variant}.{suffix}")
        if path is not None and path.exists():
            return path.read_bytes()
        width, height = job.dimensions
        reference = self.reference_for(job.id)
        data = render(
            width, height, int(job.seconds), prompt=job.prompt, reference=reference, seed=job.id
        )
        if path is not None:
            _write_atomic(path, data)
        return data

    def _persist(self, job: Job, reference: bytes | None) -> None:
        """Write the job record (and a new reference); a deleted job loses its other files."""
        record = self._path(f"{job.id}.json")
        if record is None:
            return
        if reference is not None:
            _write_atomic(record.with_suffix(".reference"), reference)
        if job.deleted:
            for path in record.parent.glob(f"{job.id}.*"):
                if path != record:
                    path.unlink(missing_ok=True)
        _write_atomic(record, json.dumps(asdict(job)).encode())

    def _path(self, name: str) -> Path | None:
        return None if self.config.state_dir is None else self.config.state_dir / name
