#!/usr/bin/env bash
# Runs every test of daena-trace-agent, the Python SDK interop tests included.
# Installs what they need first: two virtualenvs with the pinned OpenTelemetry Python
# SDK and exporters (the OTLP/JSON exporter pins older packages, so it has its own), and
# Debian's chromium package for the status page test (tests/status_page.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}

# Creates (or refreshes when its requirements changed) the virtualenv $1 from file $2.
venv() {
  local dir=$1 requirements=$2
  local stamp="$dir/.requirements"
  if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    return
  fi
  echo "Installing $requirements into $dir"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
}

# Installs Debian's chromium when it is not on the PATH (as root, or through sudo). When it
# cannot, the status page test fails and says why: it never passes without a browser.
chromium() {
  if command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
    return
  fi
  local as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "chromium is missing and neither root nor sudo is available to install it; tests/status_page.rs will fail" >&2
      return
    fi
    as_root=(sudo)
  fi
  echo "Installing chromium (Debian package) for the status page test"
  if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "chromium could not be installed; tests/status_page.rs will fail" >&2
  fi
}

chromium
venv .venv-interop tests/interop/requirements.txt
venv .venv-interop-json tests/interop/requirements-json.txt

"$python" scripts/check-layering.py
cargo test --locked --all-targets "$@"
