#!/usr/bin/env bash
# The SAML tests run a real identity provider (pysaml2), which signs and encrypts with the
# xmlsec1 command-line tool. Install Debian's xmlsec1 when it is missing. (Siphera itself
# uses the xmlsec Python wheel, which bundles its library: production needs no xmlsec1.)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v xmlsec1 >/dev/null 2>&1; then
    say "xmlsec1 is installed ($(command -v xmlsec1))"
    exit 0
fi
say "xmlsec1 is missing (the SAML tests' identity provider needs it); installing Debian's xmlsec1"
apt_install xmlsec1
command -v xmlsec1 >/dev/null 2>&1 || die "xmlsec1 was installed but is not on PATH."
say "xmlsec1 installed ($(xmlsec1 --version 2>/dev/null | head -n 1 || echo xmlsec1))"
