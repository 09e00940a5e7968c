"""Settings: the removed private-hosts switch, the allowlist that replaces it, and bad
values said in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import (
    Settings,
    SettingsError,
    check_environment,
    env_example,
    env_name,
    load_settings,
)


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


def test_bad_values_are_one_line_naming_each_setting_and_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SORA_PROVIDER", "sora")
    monkeypatch.setenv("SORA_POLL_INTERVAL", "-1")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "eyJ-secret-key")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and "eyJ-secret-key" not in message
    assert "SORA_PROVIDER: Input should be 'openai', 'google_veo' or 'replicate'" in message
    assert "SORA_POLL_INTERVAL: Input should be greater than 0" in message


def test_env_example_is_current_and_names_every_setting() -> None:
    """.env.example is generated (`sora-worker env-example > .env.example`): regenerate it
    when a setting changes; this fails until then."""
    committed = (Path(__file__).parent.parent / ".env.example").read_text()
    assert committed == env_example(), "run `sora-worker env-example > .env.example`"
    for name in Settings.model_fields:
        assert f"# {env_name(name)}=" in committed, name
