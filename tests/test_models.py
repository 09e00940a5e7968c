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


AFTER_PREVIEWS = date(2026, 12, 5)


@pytest.mark.parametrize(
    ("preview", "ga"),
    [
        ("veo-3.1-generate-preview", "veo-3.1-generate-001"),
        ("veo-3.1-fast-generate-preview", "veo-3.1-fast-generate-001"),
        ("veo-3.1-lite-generate-preview", "veo-3.1-fast-generate-001"),
    ],
)
def test_veo_previews_are_retired_on_the_gemini_api_naming_the_ga_model(
    preview: str, ga: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        models.check(
            preview,
            "1280x720",
            "8",
            image=True,
            host="generativelanguage.googleapis.com",
            today=AFTER_PREVIEWS,
        )
    assert caught.value.kind == "model_retired"
    assert "2026-10-22" in str(caught.value) and ga in str(caught.value)
    models.check(  # the day before, and on Vertex AI, where no date is known
        preview,
        "1280x720",
        "8",
        image=True,
        host="generativelanguage.googleapis.com",
        today=date(2026, 10, 21),
    )
    models.check(
        preview, "1280x720", "8", image=True, host="aiplatform.googleapis.com", today=AFTER_PREVIEWS
    )


def test_every_fact_says_where_it_was_read_and_when() -> None:
    for spec in models.MODELS.values():
        assert spec.source.where and spec.source.on, spec.name
        if spec.usd_per_second is not None:
            assert spec.price_source is not None, spec.name
        if spec.provider == "replicate":
            assert spec.replicate is not None, spec.name
        for gone in spec.retired:
            assert gone.instead and gone.source.on, spec.name


def test_photos_go_as_the_model_takes_them_on_its_own_host_and_as_one_elsewhere() -> None:
    assert models.image_inputs("google_veo", "veo-3.1-generate-001").kind == "first_last"
    assert models.image_inputs("replicate", "kwaivgi/kling-v3-video").kind == "first_last"
    assert models.image_inputs("openai", "veo-3.1-generate-001").kind == "one"  # a gateway
    assert models.image_inputs("openai", "sora-2").kind == "one"
    assert models.image_inputs("openai", "someone-elses-model").kind == "one"


def test_a_model_made_from_photos_only_refuses_a_row_without_one() -> None:
    with pytest.raises(RequestRejected) as caught:
        models.check(
            "wan-video/wan-2.2-i2v-fast", "1280x720", "5", image=False, host=None, today=AFTER_SORA
        )
    assert "photo" in str(caught.value)
