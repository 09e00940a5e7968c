"""What an archived video is, read from the file itself: length, frame size, a poster,
and (optionally) a smaller rendition.

Why from the file: the provider's word on size and length is a request, not a fact,
and gateways vary; the stored MP4 is what viewers get. PyAV (``av``) is imported only
when a video is probed, and every function here is blocking CPU work that callers run
in a thread. Memory stays flat: the poster decodes one frame, the rendition goes
frame by frame, and both read from a file on disk, never from bytes in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from service.media.thumbnails import webp

RENDITION_PRESET = "veryfast"


class MediaError(Exception):
    """The file could not be read or written as a video; ``str()`` says why."""


@dataclass(frozen=True)
class Facts:
    duration_seconds: float | None
    width: int
    height: int
    poster_webp: bytes
    """The first frame as WebP (the one image type the video bucket takes)."""


def probe(path: Path) -> Facts:
    """The video's length and size, and its first frame as WebP."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream")
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            for frame in container.decode(stream):
                poster = webp(frame.to_image())  # type: ignore[no-untyped-call]
                return Facts(duration, frame.width, frame.height, poster)
    except av.FFmpegError as err:
        raise MediaError(f"cannot read the video: {err}") from err
    raise MediaError("the video has no frames")


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return round(float(stream.duration * stream.time_base), 3)
    if container.duration is not None:
        return round(float(container.duration) / 1_000_000, 3)  # av.time_base: microseconds
    return None


def render(source: Path, target: Path, kbps: int) -> None:
    """Re-encode ``source`` as H.264 at about ``kbps`` into ``target`` (MP4); audio, if
    any, is copied as it is."""
    import av

    try:
        with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4") as out:
            video_in = inp.streams.video[0]
            rate = video_in.average_rate or Fraction(24)
            video_out = out.add_stream("libx264", rate=rate)
            video_out.width = video_in.codec_context.width // 2 * 2
            video_out.height = video_in.codec_context.height // 2 * 2
            video_out.pix_fmt = "yuv420p"
            video_out.bit_rate = kbps * 1000
            video_out.options = {"preset": RENDITION_PRESET}
            audio_in = inp.streams.audio[0] if inp.streams.audio else None
            audio_out = out.add_stream_from_template(audio_in) if audio_in is not None else None
            streams: list[Any] = [s for s in (video_in, audio_in) if s is not None]
            for packet in inp.demux(*streams):
                if packet.stream is audio_in:
                    if packet.dts is not None and audio_out is not None:
                        packet.stream = audio_out
                        out.mux(packet)
                    continue
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        out.mux(video_out.encode(frame))
            out.mux(video_out.encode(None))
    except (av.FFmpegError, IndexError) as err:
        raise MediaError(f"cannot make a rendition: {err}") from err
