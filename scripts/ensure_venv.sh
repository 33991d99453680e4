#!/usr/bin/env bash
# Create .venv (Python 3.11) and install requirements-dev.txt into it, but only when the
# requirements files changed since the last install (their hash is kept in .venv).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
REQUIREMENTS=(requirements.txt requirements-dev.txt)

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [[ -n $candidate ]] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    python="$(find_python)" || die "Python 3.11 or newer is needed and none was found." \
        "Install python3.11 (Debian: apt-get install python3 python3-venv) or set PYTHON."
    say "Creating the virtualenv .venv with $python ($("$python" --version 2>&1))"
    rm -rf "$VENV"
    if ! failed="$("$python" -m venv "$VENV" 2>&1)"; then
        printf '%s\n' "$failed" >&2
        # Debian and Ubuntu ship venv's ensurepip apart (python3-venv); Python's message
        # names the package: "apt install python3.11-venv".
        [[ $failed == *"because ensurepip is not"* ]] ||
            die "'$python -m venv' failed (see above)."
        package="$(grep -oE 'apt(-get)? install [A-Za-z0-9.+-]+' <<<"$failed" | awk '{print $NF}' |
            head -n 1)"
        package="${package:-python3-venv}"
        say "$python has no ensurepip (Debian's $package is missing); installing $package"
        apt_install "$package"
        rm -rf "$VENV"
        "$python" -m venv "$VENV" ||
            die "'$python -m venv' failed even after installing $package (see above)."
    fi
fi

wanted="$(cat "${REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f $STAMP && $(cat "$STAMP") == "$wanted" ]]; then
    say "Python dependencies are up to date (.venv)"
    exit 0
fi

say "Installing Python dependencies into .venv (requirements changed or first run)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip ||
    note "(could not upgrade pip; going on with the one in .venv)"
# xmlsec and lxml only from wheels: built from source they disagree on libxml2.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=xmlsec,lxml \
    -r requirements-dev.txt ||
    die "pip install -r requirements-dev.txt failed (see above)."
echo "$wanted" >"$STAMP"
say "Python dependencies installed"
