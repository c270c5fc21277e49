#!/usr/bin/env bash
# Runs every test of daena-trace-agent, the Python SDK interop tests included.
# Installs what they need first: two virtualenvs with the pinned OpenTelemetry Python
# SDK and exporters (the OTLP/JSON exporter pins older packages, so it has its own).
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

venv .venv-interop tests/interop/requirements.txt
venv .venv-interop-json tests/interop/requirements-json.txt

"$python" scripts/check-layering.py
cargo test --locked --all-targets "$@"
