"""Settings: grouped in the code, read from the same flat environment names as ever;
durations in seconds; the removed private-hosts switch, the allowlist that replaces it,
and bad values said in one line."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import (
    Settings,
    SettingsError,
    check_environment,
    declared_settings,
    env_example,
    known_env_names,
    load_settings,
)
from service.providers.registry import NAMES, SimulatorSettings, VeoFakeSettings


def test_the_removed_private_hosts_switch_names_its_replacement() -> None:
    with pytest.raises(SettingsError) as caught:
        check_environment({"SORA_IMAGE_PRIVATE_HOSTS": "true"})
    message = str(caught.value)
    assert "\n" not in message
    assert "SORA_IMAGE_PRIVATE_HOSTS was removed" in message
    assert "SORA_IMAGE_ALLOW_HOSTS" in message


def test_the_allowlist_is_read_as_host_port_pairs() -> None:
    settings = Settings(photos={"allow_hosts": "photos.internal:8443, 10.0.0.5:80"})
    assert settings.photos.allow_list == {("photos.internal", 8443), ("10.0.0.5", 80)}
    assert Settings().photos.allow_list == frozenset()  # nothing private by default


def test_an_allowlist_entry_without_a_port_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match=r"photos\.internal"):
        Settings(photos={"allow_hosts": "photos.internal"})


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


@pytest.mark.parametrize(
    "url", ["http://db.example.com", "http://PROJECT.supabase.co", "http://10.0.0.5:8000"]
)
def test_a_remote_supabase_over_plain_http_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Issue 24, finding 8: the service-role key would travel in clear."""
    monkeypatch.setenv("SUPABASE_URL", url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_do-not-show")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and "sb_secret_do-not-show" not in message
    assert message.startswith("SUPABASE_URL: ") and "https://" in message, message


@pytest.mark.parametrize(
    "url",
    [
        "https://PROJECT.supabase.co",
        "http://127.0.0.1:54321",
        "http://localhost:54321",
        "http://[::1]:54321",
    ],
)
def test_https_or_a_local_supabase_is_accepted(url: str) -> None:
    storage = Settings(storage={"supabase_url": url, "service_role_key": "key"}).storage
    assert storage.supabase_url == url


def test_env_example_is_current_and_names_every_setting() -> None:
    """.env.example is generated (`sora-worker env-example > .env.example`): regenerate it
    when a setting changes; this fails until then."""
    committed = (Path(__file__).parent.parent / ".env.example").read_text()
    assert committed == env_example(), "run `sora-worker env-example > .env.example`"
    for declared in declared_settings():
        assert f"# {declared.env_name}=" in committed, declared.path


EVERY_NAME = {
    "DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "GOOGLE_API_KEY", "GEMINI_API_KEY",
    "GOOGLE_VERTEX_BASE_URL", "REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY", "SORA_PROVIDER", "SORA_WEBHOOK_URL",
    "SORA_REPLICATE_WEBHOOK_SECRET", "SORA_OPENAI_WEBHOOK_SECRET",
    "SORA_WEBHOOK_POLL_INTERVAL", "SORA_WAKEUPS", "SORA_MODEL", "SORA_DEFAULT_SIZE",
    "SORA_DEFAULT_SECONDS", "SORA_POLL_INTERVAL", "SORA_POLL_CEILING",
    "SORA_TYPICAL_GENERATION_SECONDS", "SORA_SWEEP_INTERVAL", "SORA_LEASE_SECONDS",
    "SORA_CONCURRENCY", "SORA_POOL_SIZE", "SORA_MAX_ATTEMPTS", "SORA_PROVIDER_TIMEOUT",
    "SORA_GENERATION_TIMEOUT", "SORA_PREPARED_STATEMENTS", "SORA_RETRY_BASE",
    "SORA_RETRY_CAP", "SORA_SHUTDOWN_GRACE", "SORA_WORKER_ID", "SORA_IMAGE_MAX_BYTES",
    "SORA_IMAGE_TIMEOUT", "SORA_IMAGE_ALLOW_HOSTS", "SORA_DATA_DIR", "SORA_STORAGE_HOST",
    "SORA_STORAGE_PORT", "SORA_PUBLIC_URL", "SORA_SIMULATOR_PORT", "SORA_SIMULATOR_PROFILE",
    "SORA_VEO_FAKE_PORT", "SORA_REPLICATE_FAKE_PORT", "SORA_HTTP_HOST", "SORA_HTTP_PORT",
    "SORA_RENDITION_BITRATE", "SORA_VIDEO_BUCKET", "SORA_IMAGE_BUCKET", "SORA_LOG_FORMAT",
    "SORA_LOG_LEVEL",
}  # fmt: skip
"""The environment names operators have set since before the settings were grouped:
an ``.env`` that worked keeps working."""

ADDED_SINCE = {
    # The HTTP surface's bounds (issue 24).
    "SORA_METRICS_TOKEN", "SORA_WEBHOOK_HOST", "SORA_WEBHOOK_PORT",
    # What the public may ask for and spend (issue 23).
    "SORA_ALLOWED_MODELS", "SORA_USER_DAILY_VIDEOS", "SORA_USER_DAILY_SECONDS",
    "SORA_DAILY_BUDGET_USD", "SORA_PUBLIC_PROMPTS",
    # Production never falls back to a stand-in (issue 28).
    "SORA_STAND_INS", "SORA_STORAGE",
    # The dashboard (issue 26).
    "SORA_DASHBOARD_HOST", "SORA_DASHBOARD_PORT", "SORA_DASHBOARD_TOKEN",
    "SORA_DASHBOARD_ORIGIN", "SORA_DASHBOARD_REFRESH",
    # One rate for every replica; provider downloads guarded (issues 25, 24).
    "SORA_RATE_LIMITS", "SORA_DELIVERY_HOSTS", "SORA_VIDEO_MAX_BYTES",
    # Polls bounded by how late a finished video may be seen (issue 27).
    "SORA_POLL_LATENESS",
}  # fmt: skip
"""Settings added after the grouping."""


def test_the_environment_names_are_the_ones_operators_have_always_set() -> None:
    assert known_env_names() == EVERY_NAME | ADDED_SINCE


def test_each_setting_lands_in_its_group_and_durations_are_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "DATABASE_URL": "postgresql://db/x",
        "SORA_LEASE_SECONDS": "30",
        "SORA_POLL_INTERVAL": "2.5",
        "GEMINI_API_KEY": "the-second-name",
        "SORA_VEO_FAKE_PORT": "9002",
        "SORA_SIMULATOR_PROFILE": "litellm",
        "SORA_STORAGE_PORT": "",  # compose's unset variables: ignored
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == "postgresql://db/x"
    assert settings.worker.lease == timedelta(seconds=30)
    assert settings.polls.interval == timedelta(seconds=2.5)
    key = settings.providers.of("google_veo").api_key
    assert key is not None and key.get_secret_value() == "the-second-name"
    assert settings.stand_ins.of("google_veo", VeoFakeSettings).port == 9002
    assert settings.stand_ins.of("openai", SimulatorSettings).profile == "litellm"
    assert settings.stand_ins.storage_port == 8090


def test_code_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SORA_POLL_INTERVAL", "5")
    monkeypatch.setenv("SORA_PROVIDER", "replicate")
    settings = load_settings(polls={"interval": timedelta(seconds=1)})
    assert settings.polls.interval == timedelta(seconds=1)
    assert settings.generation.provider == "replicate"  # the rest of the group is read


def test_a_misspelt_setting_is_refused_with_the_name_it_was_meant_to_be() -> None:
    with pytest.raises(
        SettingsError, match=r"SORA_LEASE_SECOND \(did you mean SORA_LEASE_SECONDS\?\)"
    ):
        check_environment({"SORA_LEASE_SECOND": "30"})


def test_the_wiring_names_no_provider_adding_one_is_its_module_and_registry_entry() -> None:
    """runtime loops over the registry and config composes its groups: neither names a
    provider (but for SORA_PROVIDER's default)."""
    service = Path(__file__).parent.parent / "service"
    named: list[str] = []
    for path in [*(service / "runtime").glob("*.py"), *(service / "config").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                named.append(f"{path.parent.name}/{path.name}: {node.value}")
    assert named == ["config/_groups.py: openai"]
