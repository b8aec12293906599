#!/usr/bin/env bash
# Builds the release binaries exactly as the Dockerfile does and checks that they carry no
# test hook: the `fail` crate's `failpoints` feature is not enabled in that build, and no
# binary contains the `FAILPOINTS` variable name or the name of any fail point in the source.
# As a control, the same search must find them in a worker built with `--features
# worker/failpoints`; a search that finds nothing anywhere would prove nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

bins=(ingest worker hookctl console)
cargo build --release --locked "${bins[@]/#/--bin=}"

if cargo tree --locked -e features -i fail | grep -q 'fail feature "failpoints"'; then
  echo "the release build enables fail/failpoints:" >&2
  cargo tree --locked -e features -i fail >&2
  exit 1
fi

# Every fail point declared in the source, plus the variable that arms them.
mapfile -t needles < <(grep -rhoE 'fail_point!\(\s*"[^"]+"' ingest/src worker/src hookctl/src console/src shared/src |
  sed -E 's/.*"([^"]+)"/\1/' | sort -u)
if [ "${#needles[@]}" -eq 0 ]; then
  echo "found no fail_point! in the source; this check has nothing to look for" >&2
  exit 1
fi
needles+=(FAILPOINTS)

contains() { # binary, needle
  grep -qaF -- "$2" "$1"
}

cargo build --locked --features worker/failpoints --bin worker
for needle in "${needles[@]}"; do
  if ! contains target/debug/worker "$needle"; then
    echo "control failed: a worker built with the fail points does not contain \"$needle\"" >&2
    exit 1
  fi
done

status=0
for bin in "${bins[@]}"; do
  for needle in "${needles[@]}"; do
    if contains "target/release/$bin" "$needle"; then
      echo "target/release/$bin contains the test hook \"$needle\"" >&2
      status=1
    fi
  done
done
if [ "$status" -eq 0 ]; then
  echo "release binaries (${bins[*]}) carry no fail point (looked for: ${needles[*]})"
fi
exit "$status"
