#!/usr/bin/env bash
# Supply-chain checks (SECURITY.md): cargo deny for licences, banned and duplicate crates
# and sources (deny.toml), cargo audit for RustSec advisories. Installs both when missing.
#
# Advisories need the RustSec database, which this project's build machines cannot fetch:
# they keep a snapshot beside the checkout (../shared/advisory-db).
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  local tool=$1 version=$2
  if ! cargo "${tool#cargo-}" --version 2>/dev/null | grep -q " $version"; then
    echo "Installing $tool $version"
    # One target directory for both, so the crates they share are built once.
    cargo install --locked --quiet --target-dir target/tools "$tool" --version "$version"
  fi
}

install cargo-deny 0.20.2
install cargo-audit 0.22.2

cargo deny --log-level error check bans licenses sources

# The advisory database: $ADVISORY_DB or ../shared/advisory-db when either holds a snapshot
# (used offline), else the live one from GitHub.
snapshot=${ADVISORY_DB:-../shared/advisory-db}
if [ -d "$snapshot/crates" ]; then
  echo "cargo audit against the advisory snapshot in $snapshot"
  cargo audit --db "$snapshot" --no-fetch --stale
elif timeout 20 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo audit
else
  echo "ADVISORIES NOT CHECKED: no snapshot in $snapshot and github.com/rustsec/advisory-db cannot be reached;" >&2
  echo "  clone it somewhere and run: ADVISORY_DB=<dir> $0" >&2
fi
