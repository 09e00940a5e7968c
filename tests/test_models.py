"""The model registry: what a known model can do, and where it has been retired."""

from __future__ import annotations

from datetime import date

import pytest

from service.providers import models
from service.providers.base import RequestRejected

AFTER_SORA = date(2026, 11, 25)
BEFORE_SORA = date(2026, 9, 1)


@pytest.mark.parametrize(
    ("model", "size", "seconds", "image", "ok"),
    [
        ("sora-2", "720x1280", "4", True, True),
        ("sora-2", "1792x1024", "4", False, False),
        ("sora-2-pro", "1792x1024", "12", False, True),
        ("sora-2-2025-10-06", "1280x720", "8", False, True),  # a snapshot of sora-2
        ("sora-2", "720x1280", "10", False, False),
        ("veo-3.1-generate-preview", "1920x1080", "8", True, True),
        ("veo-3.1-generate-preview", "1920x1080", "6", True, False),  # 1080p: 8 s only
        ("google/veo-3.1", "1920x1080", "6", False, True),  # Replicate's host judges
        ("veo-3.1-fast-generate-preview", "720x1280", "8", False, True),
        ("veo-3.1-generate-preview", "1024x1792", "8", False, False),
        ("veo-3.1-generate-preview", "1280x720", "12", False, False),
        ("google/veo-3.1", "1280x720", "4", True, True),
        ("kling-2.1", "999x333", "17", True, True),  # unknown: the gateway decides
    ],
)
def test_known_models_are_checked_and_unknown_ones_left_to_their_host(
    model: str, size: str, seconds: str, image: bool, ok: bool
) -> None:
    def check() -> None:
        models.check(model, size, seconds, image=image, host="127.0.0.1", today=AFTER_SORA)

    if ok:
        check()
    else:
        with pytest.raises(RequestRejected) as caught:
            check()
        assert caught.value.kind == "invalid_request"
        assert "use one of" in str(caught.value)


@pytest.mark.parametrize("host", ["api.openai.com", "my-resource.openai.azure.com"])
def test_sora_is_retired_on_openais_own_hosts_naming_what_to_use(host: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        models.check("sora-2-pro", "720x1280", "4", image=False, host=host, today=AFTER_SORA)
    assert caught.value.kind == "model_retired"
    assert "2026-09-24" in str(caught.value) and "SORA_MODEL" in str(caught.value)
    assert "veo-3.1" in str(caught.value)
    models.check("sora-2-pro", "720x1280", "4", image=False, host=host, today=BEFORE_SORA)


@pytest.mark.parametrize("host", ["127.0.0.1", "litellm.internal", None])
def test_the_name_lives_on_where_others_serve_it(host: str | None) -> None:
    models.check("sora-2", "720x1280", "4", image=False, host=host, today=AFTER_SORA)


def test_veo_aspect_ratios() -> None:
    assert models.MODELS["veo-3.1-generate-preview"].aspect_ratios == {"16:9", "9:16"}
