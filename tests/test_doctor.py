"""``sora-worker doctor``: all OK on the embedded defaults, FAIL with the fix otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from service.commands import doctor
from service.commands.doctor import examine, worst
from service.core.diagnosis import Finding
from service.database.migrations import load, migrate
from service.database.operator import Operator
from service.local.simulator import Simulator, SimulatorConfig
from tests.conftest import FAST_SIMULATOR, changed, make_settings
from tests.fakes.realtime_server import started as realtime_started
from tests.fakes.supabase_storage import started
from tests.supabase_like import make_supabase_like
from tests.test_cli import env_for
from tests.test_database_faults import proxied
from tests.test_operator import cli
from tests.test_storage_policies import SUPABASE_STORAGE


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in findings:
        out.setdefault(finding.check, []).append(finding)
    return out


async def test_the_embedded_defaults_are_all_ok_and_nothing_is_created(
    db_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "fresh"
    status, out, err = await cli(env_for(db_url, data_dir), "doctor", "--json")
    report = json.loads(out)
    assert status == 0, (out, err)
    assert report["worst"] == "OK"
    checks = {c["check"] for c in report["checks"]}
    assert checks >= {"database", "migrations", "listen", "local storage", "provider", "disk"}
    assert all(c["level"] == "OK" for c in report["checks"]), report
    assert "simulator" in next(c for c in report["checks"] if c["check"] == "provider")["detail"]
    # Before: the data directory, the simulator's state and a storage probe appeared.
    assert not data_dir.exists()
    assert err == ""  # no log line to interleave with the findings


async def test_with_nothing_set_doctor_starts_no_database_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """Before: a 39 MB embedded database appeared in a fresh directory."""
    env = {k: v for k, v in env_for("", tmp_path).items() if k != "DATABASE_URL"}
    env.pop("SORA_STAND_INS")
    fresh = tmp_path / "data"
    status, out, err = await cli(dict(env, SORA_DATA_DIR=str(fresh)), "doctor")
    assert status == 0, (out, err)
    database = next(line for line in out.splitlines() if " database " in line)
    assert database.startswith("OK") and "embedded PostgreSQL" in database
    assert not fresh.exists() and err == ""


async def test_an_unmigrated_database_is_what_run_will_apply(
    empty_db_url: str, tmp_path: Path
) -> None:
    status, out, _ = await cli(env_for(empty_db_url, tmp_path), "doctor")
    assert status == 1  # a warning: `run` migrates by itself
    line = next(line for line in out.splitlines() if "migrations" in line)
    assert line.startswith("WARN") and f"{len(load())} to apply" in line
    assert "`sora-worker run` applies them when it starts" in line
    conn = await asyncpg.connect(empty_db_url)
    try:  # doctor changed nothing
        assert await conn.fetchval("select to_regnamespace('sora_worker')") is None
    finally:
        await conn.close()


async def test_a_missing_migration_is_named(db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("delete from sora_worker.migrations where name = '0008_media.sql'")
    finally:
        await conn.close()
    found = by_check(await examine(make_settings(db_url, tmp_path)))
    assert found["migrations"][0].level == "WARN"
    assert "0008_media.sql" in found["migrations"][0].detail


async def test_a_migration_changed_after_it_was_applied_fails(db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "update sora_worker.migrations set checksum = 'x' where name = '0008_media.sql'"
        )
    finally:
        await conn.close()
    found = by_check(await examine(make_settings(db_url, tmp_path)))["migrations"][0]
    assert found.level == "FAIL" and "0008_media.sql" in found.detail


async def test_a_public_role_that_can_write_the_workers_objects_or_read_rows_fails(
    supabase_url: str, tmp_path: Path
) -> None:
    """On a database set up as Supabase sets one up, then migrated: OK; a grant made by
    hand since (or an older migrate's ledger in public) is a FAIL naming it."""
    healthy = by_check(await examine(make_settings(supabase_url, tmp_path)))
    assert [f.level for f in healthy["public access"]] == ["OK"]
    conn = await asyncpg.connect(supabase_url)
    try:
        await conn.execute(
            """grant update on sora_worker.migrations to anon;
               grant usage on schema sora_worker to anon;
               create policy everyone on public.videos for select to authenticated
                   using (true);"""
        )
    finally:
        await conn.close()
    found = by_check(await examine(make_settings(supabase_url, tmp_path)))["public access"]
    assert [f.level for f in found] == ["FAIL"] * 3
    assert {f.detail for f in found} == {
        "anon may use the schema sora_worker (the worker's own)",
        "anon holds rights on the table sora_worker.migrations (the worker's own)",
        "policy everyone on public.videos lets authenticated read rows by (true), not only "
        "their own",
    }
    assert "run `sora-worker migrate`" in found[0].fix


async def supabase_database(empty_db_url: str) -> asyncpg.Connection:
    """A database with Supabase's storage schema (as the seed left it), then migrated."""
    await make_supabase_like(empty_db_url)  # its roles, which the storage schema grants to
    conn = await asyncpg.connect(empty_db_url)
    await conn.execute(SUPABASE_STORAGE)
    await migrate(conn)
    return conn


async def test_a_private_bucket_fails_with_the_fix(empty_db_url: str, tmp_path: Path) -> None:
    conn = await supabase_database(empty_db_url)
    try:
        healthy = by_check(await examine(make_settings(empty_db_url, tmp_path)))
        assert [f.level for f in healthy["buckets"]] == ["OK", "OK"]
        assert healthy["storage policies"][0].level == "OK"
        await conn.execute("update storage.buckets set public = false where id = 'hug-videos'")
    finally:
        await conn.close()
    findings = await examine(make_settings(empty_db_url, tmp_path))
    bucket = next(f for f in by_check(findings)["buckets"] if "hug-videos" in f.detail)
    assert bucket.level == "FAIL" and "private" in bucket.detail
    assert "update storage.buckets set public = true where id = 'hug-videos'" in bucket.fix
    assert worst(findings) == 2


async def test_a_public_write_policy_fails_unless_guarded(
    empty_db_url: str, tmp_path: Path
) -> None:
    conn = await supabase_database(empty_db_url)
    try:
        await conn.execute(
            """create policy "Anyone can upload videos" on storage.objects
               for insert to anon with check (bucket_id = 'hug-videos')"""
        )
        guarded = by_check(await examine(make_settings(empty_db_url, tmp_path)))
        assert guarded["storage policies"][0].level == "OK"  # the restrictive guards hold
        await conn.execute("drop policy sora_worker_no_public_insert on storage.objects")
    finally:
        await conn.close()
    policy = by_check(await examine(make_settings(empty_db_url, tmp_path)))["storage policies"][0]
    assert policy.level == "FAIL" and "Anyone can upload videos" in policy.detail
    assert "sora-worker migrate" in policy.fix


async def test_an_unreachable_database_is_one_fail_line(tmp_path: Path) -> None:
    settings = make_settings("postgresql://nobody@127.0.0.1:1/none", tmp_path)
    found = by_check(await examine(settings))
    assert found["database"][0].level == "FAIL" and "DATABASE_URL" in found["database"][0].fix
    assert "migrations" not in found


async def test_a_supabase_key_that_storage_refuses_fails_with_the_fix(
    db_url: str, tmp_path: Path
) -> None:
    async with started() as fake:
        good = make_settings(
            db_url, tmp_path, supabase_url=fake.url, supabase_service_role_key=fake.service_key
        )
        assert by_check(await examine(good))["service key"][0].level == "OK"
        wrong = "sk-not-this-project"
        bad = changed(good, supabase_service_role_key=SecretStr(wrong))
        refused = by_check(await examine(bad))["service key"][0]
    assert refused.level == "FAIL" and "SUPABASE_SERVICE_ROLE_KEY" in refused.fix
    assert wrong not in refused.detail + refused.fix


async def test_listen_through_a_transaction_pooler_is_a_warning_with_the_fix(
    db_url: str, tmp_path: Path
) -> None:
    async with proxied(db_url) as (proxy, dsn):
        proxy.deaf = True  # notifications never arrive, as through Supavisor's port 6543
        findings = await examine(make_settings(dsn, tmp_path))
    listen = by_check(findings)["listen"][0]
    assert listen.level == "WARN" and "6543" in listen.fix
    assert worst(findings) == 1


async def test_a_model_the_provider_does_not_serve_fails_with_the_fix(
    db_url: str, tmp_path: Path
) -> None:
    simulator = Simulator(SimulatorConfig(**FAST_SIMULATOR))
    await simulator.start()
    try:
        settings = make_settings(
            db_url,
            tmp_path,
            model="veo-9",
            openai_api_key="sk-test",
            openai_base_url=simulator.base_url,
        )
        findings = by_check(await examine(settings))
    finally:
        await simulator.stop()
    model = findings["model"][0]
    assert model.level == "FAIL" and "'veo-9' is not among the served models" in model.detail
    assert "SORA_MODEL" in model.fix
    assert findings["list videos"][0].level == "OK"


async def test_realtime_is_checked_with_the_service_key(db_url: str, tmp_path: Path) -> None:
    async with realtime_started(db_url) as realtime:
        settings = make_settings(
            db_url,
            tmp_path,
            wakeups="realtime",
            supabase_url=realtime.url,
            supabase_service_role_key=realtime.service_key,
        )
        opens = by_check(await examine(settings))["realtime"][0]
        wrong = "sk-not-this-project"
        refused_key = SecretStr(wrong)
        refused = by_check(await examine(changed(settings, supabase_service_role_key=refused_key)))[
            "realtime"
        ][0]
        url = realtime.url
    assert (opens.level, opens.detail) == ("OK", "the Realtime websocket opens")
    assert refused.level == "WARN" and "401" in refused.detail
    assert wrong not in refused.detail + refused.fix
    gone = by_check(await examine(changed(settings, supabase_url=url)))
    assert gone["realtime"][0].level == "WARN" and "SUPABASE_URL" in gone["realtime"][0].fix


async def test_storage_used_per_bucket_on_a_supabase_database(empty_db_url: str) -> None:
    conn = await supabase_database(empty_db_url)
    try:
        await conn.execute(
            """insert into storage.objects (bucket_id, name, metadata) values
               ('hug-videos', 'a.mp4', '{"size": 1000}'), ('hug-videos', 'a.jpg', '{"size": 24}'),
               ('avatars', 'me.png', '{"size": 7}')"""
        )
    finally:
        await conn.close()
    async with asyncpg.create_pool(empty_db_url, min_size=1, max_size=1) as pool:
        used = await Operator(pool).storage_used(["hug-videos", "hug-images"])
    assert used == {
        "hug-videos": {"objects": 2, "bytes": 1024},
        "hug-images": {"objects": 0, "bytes": 0},
    }


@pytest.mark.parametrize(
    ("model", "level", "said"),
    [
        ("veo-3.1-generate-preview", "FAIL", "veo-3.1-generate-001"),
        ("veo-9-unheard-of", "WARN", "not in the model registry"),
        ("veo-3.1-generate-001", "OK", "docs.cloud.google.com"),
    ],
)
async def test_the_default_model_is_judged_at_its_host(
    tmp_path: Path, model: str, level: str, said: str
) -> None:
    settings = make_settings(
        "postgresql://nobody@127.0.0.1:9/x",
        tmp_path,
        provider="google_veo",
        google_api_key="AIza-test",
        google_vertex_base_url="https://generativelanguage.googleapis.com",
        model=model,
    )
    (finding,) = await doctor._default_model(settings)
    assert (finding.check, finding.level) == ("default model", level)
    assert said in finding.detail + finding.fix
