#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each:
#
#   scripts/fuzz.sh                  # every target, 10 minutes each
#   scripts/fuzz.sh 30               # every target, 30 s each (what CI runs)
#   scripts/fuzz.sh 3600 envelope    # one target for an hour
#
# Installs cargo-fuzz when it is missing. Each target keeps what it learns in
# fuzz/corpus/<target> (not committed) and starts from the committed seeds in
# fuzz/seeds/<target>. A crash stops the run with the input saved in fuzz/artifacts/<target>/;
# `cargo fuzz run <target> <that file>` reproduces it. Fix the code and keep the input as a
# unit test next to it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-600}
shift || true

if [ "$(cargo fuzz --version 2>/dev/null | head -n1)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# cargo-fuzz compiles with unstable rustc flags (sanitizer, coverage instrumentation). The
# project builds on the stable toolchain, which accepts them when asked to.
export RUSTC_BOOTSTRAP=1

# The fuzz crate resolves from the workspace's lockfile: the code under test is built with the
# versions it ships with; only the fuzzing crates (pinned in fuzz/Cargo.toml) are added.
cp Cargo.lock fuzz/Cargo.lock

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  dirs=("$corpus")
  [ -d "fuzz/seeds/$target" ] && dirs+=("fuzz/seeds/$target")
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -print_funcs=0)
  [ -f "fuzz/dicts/$target.dict" ] && options+=(-dict="fuzz/dicts/$target.dict")
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run "$target" "${dirs[@]}" -- "${options[@]}"
done
