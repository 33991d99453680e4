#!/usr/bin/env bash
# The transcription tests speak known words with espeak-ng (Debian's package) into a WAV
# file, record it through a call and check the transcript. Install espeak-ng when it is
# missing. (Siphera itself does not need it: production transcribes recorded calls.)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v espeak-ng >/dev/null 2>&1; then
    say "espeak-ng is installed ($(command -v espeak-ng))"
    exit 0
fi
say "espeak-ng is missing (the transcription tests make speech with it); installing Debian's espeak-ng"
apt_install espeak-ng
command -v espeak-ng >/dev/null 2>&1 || die "espeak-ng was installed but is not on PATH."
say "espeak-ng installed ($(espeak-ng --version 2>/dev/null | head -n 1 || echo espeak-ng))"
