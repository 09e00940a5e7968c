"""``deploy/grafana/`` and ``deploy/prometheus/`` speak the worker's real metrics.

Every metric and label a dashboard panel or an alert names is checked against what a
running worker (one row made, so every family has samples) serves at ``/metrics``: a
renamed metric breaks this test, not a 3 a.m. page that never fires. The rules are also
checked by Prometheus's own ``promtool`` where it is installed (Debian's
``prometheus`` package): ``check rules``, then ``test rules`` on the expected firings
in ``deploy/prometheus/alerts_test.yml``. Each alert has its runbook line in
docs/operations.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.runtime import Runtime
from tests.test_pipeline import finished, running

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "deploy" / "grafana" / "sora-worker.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "operations.md"

PROMQL_WORDS = {
    # aggregations, functions and keywords the files use (a typo'd function is a name
    # the worker does not export, and fails below like a typo'd metric)
    "sum", "max", "min", "count", "avg", "by", "without", "on", "ignoring", "and", "or",
    "unless", "rate", "increase", "histogram_quantile", "le", "bool",
}  # fmt: skip
PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for every scrape target."""
TARGET_LABELS = {"instance", "job", "le"}
"""Labels Prometheus adds to every sample (and ``le``, a histogram bucket's)."""


def board_expressions() -> list[str]:
    board = json.loads(BOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def rule_expressions() -> dict[str, str]:
    """Each alert's expression, read with the few lines of YAML the rules file uses
    (the test suite has no YAML parser, and promtool checks the file as YAML)."""
    text = RULES.read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n      - alert: ", text)[1:]:
        name, rest = block.split("\n", 1)
        expr = re.search(r"expr: (>\n(?:          .*\n)+|.*\n)", rest)
        assert expr, name
        found[name.strip()] = " ".join(expr[1].removeprefix(">").split())
    return found


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names an expression uses."""
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    bare = re.sub(r'"[^"]*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}", "", bare)  # matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", bare))
    return words - PROMQL_WORDS, labels


async def scraped(runtime: Runtime) -> dict[str, set[str]]:
    """Sample names a running worker serves, each with the labels it carries."""
    worker = runtime.worker()
    async with running(worker), runtime.http_server(worker) as http:
        row = await finished(runtime, await runtime.repo.insert_request("a scrape's row"))
        assert row["status"] == "completed"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{http.port}/metrics") as response,
        ):
            text = await response.text()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


async def test_the_board_and_the_alerts_name_only_what_the_worker_exports(
    runtime: Runtime,
) -> None:
    exported = await scraped(runtime)
    expressions = {f"panel: {e}": e for e in board_expressions()}
    expressions.update({f"alert {name}": e for name, e in rule_expressions().items()})
    used: set[str] = set()
    for where, expr in expressions.items():
        metrics, labels = names_in(expr)
        unknown = metrics - exported.keys() - PROMETHEUS_OWN
        assert not unknown, f"{where} names {unknown}, which the worker does not export"
        known_labels = set().union(*(exported.get(m, set()) for m in metrics)) | TARGET_LABELS
        assert labels <= known_labels, f"{where} uses labels {labels - known_labels}"
        used |= metrics
    # What the issue asks the board to show: throughput, stages, in doubt, errors by
    # kind, poll rate, archive bytes, spend.
    wanted = {
        "sora_rows_finished_total",
        "sora_rows",
        "sora_rows_in_doubt",
        "sora_provider_calls_total",
        "sora_polls_total",
        "sora_archived_bytes_total",
        "sora_estimated_spend_today_usd",
        "sora_daily_budget_usd",
        "sora_oldest_unfinished_seconds",
    }
    board_metrics = set().union(*(names_in(e)[0] for e in board_expressions()))
    assert wanted <= board_metrics, wanted - board_metrics
    assert used & {"sora_expired_before_archived_total", "sora_table_read_ok"}


def test_the_board_is_well_formed() -> None:
    board = json.loads(BOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    assert board["templating"]["list"][0]["type"] == "datasource"


def test_every_alert_has_a_runbook_line() -> None:
    runbook = RUNBOOK.read_text()
    assert "## Alerts" in runbook
    for name in rule_expressions():
        assert f"**{name}**" in runbook, f"docs/operations.md has no runbook line for {name}"
    assert RULES.read_text().count('runbook_url: "docs/operations.md#alerts"') == len(
        rule_expressions()
    )


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)
def test_promtool_checks_the_rules_and_their_firings() -> None:
    assert PROMTOOL is not None
    check = run(PROMTOOL, "check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in check.stdout
    fired = run(PROMTOOL, "test", "rules", "alerts_test.yml", cwd=RULES.parent)
    assert fired.returncode == 0, fired.stdout + fired.stderr


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)
