"""What reaches an operator's terminal and a row's ``error`` from outside: one line, no
control characters, bounded, whatever a provider answers."""

from __future__ import annotations

import pytest

from service.commands.rows import run_list
from service.core.text import MAX_STORED, one_line, printable
from service.local.simulator import FailureRule
from service.runtime import Runtime
from tests.conftest import simulator_of
from tests.test_operator import shared_settings
from tests.test_pipeline import finished, running

HOSTILE = "\x1b[2J\x1b[31mrefused\x1b[0m\r\nsecond line\x07\u202eevil\u202c" + "x" * 20_000


def test_printable_spells_out_every_control_character() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("one\r\ntwo\n\nthree") == "one | two | three"
    assert printable("bell\x07 del\x7f c1\x9b") == "bell\\x07 del\\x7f c1\\x9b"
    assert printable("\u202eright-to-left") == "\\u202eright-to-left"
    assert (
        printable("tab\there, ünïcödé and emoji 🎥 stay") == "tab here, ünïcödé and emoji 🎥 stay"
    )


def test_one_line_keeps_both_ends_of_a_long_text() -> None:
    text = "START " + "y" * 10_000 + " END: sora-worker adopt ROW VIDEO"
    line = one_line(text, limit=200)
    assert len(line) <= 200
    assert line.startswith("START ") and line.endswith("adopt ROW VIDEO")
    assert "characters cut" in line


async def test_a_hostile_provider_error_is_stored_as_one_bounded_line_and_listed_inert(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator_of(runtime).config.failure_rules.append(
        FailureRule("hostile", "create", status=400, code="invalid_request", message=HOSTILE)
    )
    async with running(runtime.worker()):
        row = await finished(runtime, await runtime.repo.insert_request("a hostile answer"))
    assert row["status"] == "failed"
    error = row["error"]
    assert "\x1b" not in error and "\n" not in error and "\r" not in error
    assert "\\x1b[2J" in error and "second line" in error
    assert len(error) <= MAX_STORED
    capsys.readouterr()
    assert await run_list(shared_settings(runtime), 10, None, as_json=False) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and "\x07" not in listed and "\u202e" not in listed
    assert len(listed.splitlines()) == 1  # one row, one line
