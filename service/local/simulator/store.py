"""The simulator's jobs, uploaded references and rendered assets.

Nothing runs in the background: a job's status is derived from its ``created_at``, the
configured timings and an injectable clock, so tests move time instead of sleeping and
a restarted simulator (``state_dir``) needs only the job records.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
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
    seq: int  # creation order (nanoseconds), comparable across processes
    model: str
    prompt: str
    size: str
    seconds: str
    created_at: float
    has_reference: bool
    error: dict[str, str] | None = None  # set at create time by a "generate" FailureRule
    deleted: bool = False  # kept as a tombstone so list cursors pointing at it still work
    remixed_from: str | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        width, height = self.size.split("x")
        return int(width), int(height)

    def finishes_at(self, config: SimulatorConfig) -> float:
        """When the job ends (completed or failed), on ``config.clock``'s scale."""
        queue, generation = config.timing(self.id)
        return self.created_at + queue + generation

    def video(self, config: SimulatorConfig) -> dict[str, Any]:
        """The ``Video`` object as of ``config.clock()``."""
        now = config.clock()
        queue, generation = config.timing(self.id)
        started = self.created_at + queue
        finished = started + generation
        status, progress, completed_at, expires_at = "queued", 0, None, None
        if now >= finished and self.error is not None:
            status = "failed"
        elif now >= finished:
            status, progress, completed_at = "completed", 100, int(finished)
            expires_at = int(finished + config.expires_after_seconds)
        elif config.shapes is not None:
            fraction = (now - started) / generation
            status, progress = config.shapes.shown("queued" if now < started else "", fraction)
        elif now >= started:
            status = "in_progress"
            progress = min(99, int(100 * (now - started) / generation))
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
            "remixed_from_video_id": self.remixed_from,
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
        self.jobs: dict[str, Job] = {}
        self.created: list[CreatedVideo] = []
        self._references: dict[str, bytes] = {}
        self._assets: dict[tuple[str, str], bytes] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._last_seq = 0
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            self.refresh()

    def refresh(self) -> None:
        """Pick up jobs that other simulators sharing ``state_dir`` created or deleted.

        Several processes may serve one state directory (replicas that each host a
        simulator): every one of them must know every job, or a poll of another's job
        would answer 404.
        """
        if self.config.state_dir is None:
            return
        for path in self.config.state_dir.glob("*.json"):
            try:
                job = Job(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # being replaced right now, or not ours
            known = self.jobs.get(job.id)
            if known is None or (job.deleted and not known.deleted):
                self.jobs[job.id] = job

    def ordered(self) -> list[Job]:
        """Every job, oldest first."""
        return sorted(self.jobs.values(), key=lambda job: (job.seq, job.id))

    def get(self, video_id: str) -> Job:
        """The live job ``video_id``, else a 404."""
        job = self.jobs.get(video_id)
        if job is None and self.config.state_dir is not None:
            self.refresh()
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
        remixed_from: str | None = None,
    ) -> Job:
        """Create a job as of now."""
        job = Job(
            id=f"video_{uuid.uuid4().hex}",
            seq=self._next_seq(),
            model=model,
            prompt=prompt,
            size=size,
            seconds=seconds,
            created_at=self.config.clock(),
            has_reference=reference is not None,
            error=error,
            remixed_from=remixed_from,
        )
        self.jobs[job.id] = job
        if reference is not None:
            self._references[job.id] = reference
        await asyncio.to_thread(self._persist, job, reference)
        self.created.append(
            CreatedVideo(job.id, model, size, seconds, job.has_reference, idempotency_key)
        )
        return job

    def _next_seq(self) -> int:
        """Creation order across processes: nanoseconds, strictly rising within one."""
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

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
