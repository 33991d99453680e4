#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright's Python
# package; Playwright's own browser download cannot work on a closed network (PITFALLS 24).
# Install the Debian package when it is missing.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM=/usr/bin/chromium # admin_portal/tests/test_portal_browser.py launches this path

if [[ -x $CHROMIUM ]]; then
    say "Chromium is installed ($CHROMIUM)"
    exit 0
fi
say "Chromium is missing at $CHROMIUM (the browser tests need it); installing Debian's chromium"
apt_install chromium
[[ -x $CHROMIUM ]] || die "chromium was installed but $CHROMIUM is still missing."
say "Chromium installed ($("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"))"
