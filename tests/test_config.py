"""Settings: the removed private-hosts switch and the allowlist that replaces it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings, SettingsError, check_environment


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
