"""deploy/ as documented: what issue 28 found broken when the files were followed.

Static checks of the files themselves (no Docker engine or systemd runs in the suite):
the compose file scales (no fixed host port per replica), needs no local service and
names none it lacks, and builds its image once; the unit stops retrying a bad setting
and needs nothing its header does not say to make; the image runs as a fixed uid, keeps
a health check, and every grace outlasts the worker's own. `docs/operations.md` says
which real tools were run on them (docker compose config, hadolint, buildah,
systemd-analyze verify).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from service.config import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GRACE = WorkerSettings().shutdown_grace


def services(compose: str) -> dict[str, str]:
    """Each service's block of a compose file, by name (two-space indented keys)."""
    body = compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    blocks = re.split(r"^  (?=[a-z][\w-]*:\n)", body, flags=re.M)
    return {block.split(":", 1)[0]: block for block in blocks if block.strip()}


def seconds(text: str) -> timedelta:
    value = re.fullmatch(r"(\d+)(s?)", text.strip())
    assert value is not None, text
    return timedelta(seconds=int(value.group(1)))


def test_compose_scales_against_supabase_without_local_services() -> None:
    """Before: fixed host ports 8091 and 8090 stopped a second replica; the header said to
    remove db and simulator, which left depends_on naming them; two identical builds."""
    compose = (DEPLOY / "compose.yaml").read_text()
    found = services(compose)
    assert list(found) == ["worker"]
    worker = found["worker"]
    assert "depends_on" not in worker
    for port in re.findall(r'^\s+- "([^"]+)"', worker.split("ports:", 1)[1], flags=re.M):
        # host_ip::container_port: a free host port each, so --scale needs no edit.
        assert re.fullmatch(r"127\.0\.0\.1::\d+", port), port
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "OPENAI_BASE_URL"):
        assert f"${{{name}:?" in worker, name  # required: compose itself names it
    assert "SORA_STAND_INS: never" in worker
    assert compose.count("build:") == 1 and "image: sora-worker:" in worker


def test_each_compose_file_names_only_services_it_has_and_builds_once() -> None:
    for path in DEPLOY.glob("compose*.yaml"):
        compose = path.read_text()
        found = services(compose)
        for name, block in found.items():
            if "depends_on:" in block:
                wanted = re.findall(r"^      ([a-z][\w-]*):$", block.split("depends_on:")[1], re.M)
                assert wanted and set(wanted) <= set(found), (path.name, name, wanted)
        images = re.findall(r"^    image: (\S+)", compose, flags=re.M)
        assert len(images) == len(found), path.name  # every service names its image
        built = [
            image for image, block in zip(images, found.values(), strict=True) if "build:" in block
        ]
        assert len(built) == len(set(built)), path.name  # one build per image


def test_every_grace_outlasts_the_workers_own() -> None:
    """Before: docker stop's 10 s was less than SORA_SHUTDOWN_GRACE (30 s)."""
    for path in DEPLOY.glob("compose*.yaml"):
        for name, block in services(path.read_text()).items():
            if "sora-worker" not in block and "build:" not in block:
                continue  # not ours (the trial's PostgreSQL)
            grace = re.search(r"stop_grace_period: (\S+)", block)
            assert grace is not None and seconds(grace[1]) > GRACE, (path.name, name)
    unit = (DEPLOY / "sora-worker.service").read_text()
    timeout = re.search(r"^TimeoutStopSec=(\d+)$", unit, flags=re.M)
    assert timeout is not None and seconds(timeout[1]) > GRACE
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, flags=re.M)
    stop = re.search(r"docker stop -t (\d+)", dockerfile)
    assert stop is not None and seconds(stop[1]) > GRACE


def test_the_unit_stops_on_a_bad_setting_and_needs_only_what_it_says() -> None:
    """Before: exit 2 was restarted every 5 s for ever; nothing made the user sora or
    the venv its ExecStart names (systemd-analyze verify: "is not executable")."""
    unit = (DEPLOY / "sora-worker.service").read_text()
    assert re.search(r"^RestartPreventExitStatus=2$", unit, flags=re.M)
    assert re.search(r"^Restart=on-failure$", unit, flags=re.M)
    assert re.search(r"^DynamicUser=yes$", unit, flags=re.M)
    assert not re.search(r"^User=", unit, flags=re.M)
    executable = re.search(r"^ExecStart=(\S+)", unit, flags=re.M)
    assert executable is not None
    venv = executable[1].removesuffix("/bin/sora-worker")
    header = "\n".join(line for line in unit.splitlines() if line.startswith("#"))
    assert f"python3 -m venv {venv}" in header and f"{venv}/bin/pip install" in header
    env_file = re.search(r"^EnvironmentFile=(\S+)$", unit, flags=re.M)
    assert env_file is not None and f"/dev/null {env_file[1]}" in header
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"python3 -m venv {venv}" in operations and "RestartPreventExitStatus=2" in operations


def test_the_image_runs_as_a_fixed_uid_with_a_health_check_buildah_keeps() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, flags=re.M)
    assert "--uid 10001" in dockerfile and "--gid 10001" in dockerfile
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"sora-worker\", \"health\"\]", dockerfile, re.M)
    assert "buildah bud --format docker" in dockerfile  # the OCI format drops HEALTHCHECK


def test_the_build_context_leaves_out_what_the_image_does_not_copy() -> None:
    """Before: no .dockerignore; the context carried .venv (445 MB) and .sora-worker."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    kept = {line.removeprefix("!").rstrip("/") for line in rules if line.startswith("!")}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.M))
    copied |= {
        name
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.M)
        for name in line.split()
    }
    assert copied == kept, (copied, kept)
