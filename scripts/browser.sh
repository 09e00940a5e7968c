#!/usr/bin/env bash
# The browser the dashboard's test drives (tests/test_dashboard_browser.py): the
# system's Chromium, through Playwright (Playwright's own browser download is never
# used). `make test` runs this; `make demo` does not need it.
set -euo pipefail
# As root with apt, Debian's package is installed; otherwise this says what to install,
# and those tests are skipped until it is there (under CI they fail instead).
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium for the dashboard's browser test" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: no Chromium, so the dashboard's browser test will be skipped; install it" >&2
        echo "(Debian: sudo apt-get install chromium) and run make test again." >&2
    fi
fi

