"""Settings: the removed private-hosts switch and the allowlist that replaces it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings, SettingsError, check_environment, env_example, env_name


def test_the_removed_private_hosts_switch_names_its_replacement() -> None:
    with pytest.raises(SettingsError) as caught:
        check_environment({"SORA_IMAGE_PRIVATE_HOSTS": "true"})
    message = str(caught.value)
    assert "\n" not in message
    assert "SORA_IMAGE_PRIVATE_HOSTS was removed" in message
    assert "SORA_IMAGE_ALLOW_HOSTS" in message


def test_the_allowlist_is_read_as_host_port_pairs() -> None:
    settings = Settings(image_allow_hosts="photos.internal:8443, 10.0.0.5:80")
    assert settings.image_allow_list == {("photos.internal", 8443), ("10.0.0.5", 80)}
    assert Settings().image_allow_list == frozenset()  # nothing private by default


def test_an_allowlist_entry_without_a_port_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match=r"photos\.internal"):
        Settings(image_allow_hosts="photos.internal")


def test_env_example_is_current_and_names_every_setting() -> None:
    """.env.example is generated (`sora-worker env-example > .env.example`): regenerate it
    when a setting changes; this fails until then."""
    committed = (Path(__file__).parent.parent / ".env.example").read_text()
    assert committed == env_example(), "run `sora-worker env-example > .env.example`"
    for name in Settings.model_fields:
        assert f"# {env_name(name)}=" in committed, name
