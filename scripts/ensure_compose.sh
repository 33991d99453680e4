#!/usr/bin/env bash
# A Docker Compose that can read docker-compose.yml, for `make test` (the test that runs
# `config -q` on it: siphera/tests/test_compose_file.py). Only the client is needed: `config`
# parses and interpolates the file without talking to a Docker engine.
#
# Docker's Compose v2 plugin (`docker compose`) is used when it is there; else Debian's
# `docker-compose` (1.29), installed with apt-get when missing. The file is kept valid for
# both (no top-level `name:`, which 1.29 refuses).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if docker compose version >/dev/null 2>&1; then
    say "Docker Compose is installed ($(docker compose version 2>/dev/null | head -n 1))"
    exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
    say "docker-compose is installed ($(docker-compose version --short 2>/dev/null || echo '?'))"
    exit 0
fi
say "Neither 'docker compose' nor 'docker-compose' is here (a test checks docker-compose.yml" \
    "with it); installing Debian's docker-compose"
apt_install docker-compose
command -v docker-compose >/dev/null 2>&1 ||
    die "docker-compose was installed but is not on PATH."
say "docker-compose installed ($(docker-compose version --short 2>/dev/null || echo '?'))"
