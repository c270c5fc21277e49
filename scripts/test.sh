#!/usr/bin/env bash
# Runs every test of daena-trace-agent, the Python SDK interop tests included.
# Installs what they need first: three virtualenvs with the pinned OpenTelemetry Python
# SDK and exporters (the OTLP/JSON exporter pins older packages, so it has its own; the
# FastAPI app of tests/fastapi.rs has its own with the web stack and its instrumentation), and
# two with the validators of deploy/ (hadolint, the Kubernetes schemas, docker-compose),
# and Debian's chromium package for the status page test (tests/status_page.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}

# Creates (or refreshes when its requirements changed) the virtualenv $1 from file $2;
# packages given after them are built first, outside pip's build isolation (PyYAML 5
# builds only with an old Cython and setuptools).
venv() {
  local dir=$1 requirements=$2
  shift 2
  local stamp="$dir/.requirements"
  if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    return
  fi
  echo "Installing $requirements into $dir"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  local pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check)
  if [ $# -gt 0 ]; then
    "${pip[@]}" "$@"
    "${pip[@]}" --no-build-isolation -r "$requirements"
  else
    "${pip[@]}" -r "$requirements"
  fi
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
venv .venv-fastapi tests/interop/requirements-fastapi.txt
venv .venv-deploy tests/deploy/requirements.txt
venv .venv-compose tests/deploy/requirements-compose.txt "cython<3" "setuptools<70" wheel

"$python" scripts/check-layering.py
cargo test --locked --all-targets "$@"
