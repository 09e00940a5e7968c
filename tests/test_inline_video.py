"""The inline-video scanner: a Vertex operation's video decoded as it streams in, and
the rest of the operation intact, however the body is cut into chunks."""

from __future__ import annotations

import base64
import json
import random

from service.providers.inline_video import InlineVideoScanner


def operation(*videos: bytes, escape_slashes: bool = False) -> bytes:
    body = json.dumps(
        {
            "name": "projects/p/locations/l/publishers/google/models/m/operations/1",
            "done": True,
            "response": {
                "raiMediaFilteredCount": 0,
                "videos": [
                    {"bytesBase64Encoded": base64.b64encode(v).decode(), "mimeType": "video/mp4"}
                    for v in videos
                ],
            },
        },
        indent=1,  # whitespace around the colon, as a pretty-printing server sends
    )
    return (body.replace("/", "\\/") if escape_slashes else body).encode()


def scanned(body: bytes, cuts: list[int], keep: bool) -> tuple[bytes, bytes, InlineVideoScanner]:
    scanner = InlineVideoScanner(keep_video=keep)
    video = bytearray()
    start = 0
    for end in [*cuts, len(body)]:
        video += scanner.feed(body[start:end])
        start = end
    scanner.close()
    return bytes(video), scanner.json, scanner


def test_the_video_is_decoded_and_the_json_emptied_whatever_the_chunking() -> None:
    rng = random.Random(7)
    first, second = rng.randbytes(100_003), rng.randbytes(5_000)
    for escape in (False, True):
        body = operation(first, second, escape_slashes=escape)
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 200)))
            video, emptied, scanner = scanned(body, cuts, keep=True)
            assert video == first and scanner.payloads == 2
            parsed = json.loads(emptied)
            videos = parsed["response"]["videos"]
            assert [v["bytesBase64Encoded"] for v in videos] == ["", ""]
            assert parsed["done"] is True and videos[0]["mimeType"] == "video/mp4"


def test_a_poll_keeps_nothing_of_the_video_and_an_unfinished_operation_passes_through() -> None:
    body = operation(b"x" * 50_000)
    video, emptied, _ = scanned(body, [len(body) // 3, len(body) // 2], keep=False)
    assert video == b"" and len(emptied) < 500
    running = b'{"name": "projects/p/operations/2"}'
    assert scanned(running, [5], keep=True)[1] == running
