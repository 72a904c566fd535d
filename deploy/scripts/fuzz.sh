#!/usr/bin/env bash
# Runs each fuzz target (fuzz/, cargo-fuzz on the nightly toolchain) for
# SECONDS seconds (default 20). A crash fails the run; its input is kept under
# fuzz/artifacts/<target>/ to reproduce with `cargo +nightly fuzz run <target> <file>`.
# The smoke run of the test command builds the targets in the dev profile
# (`--dev`: faster to build on 2 cores, and 20 s of fuzzing finds what it
# finds either way); FUZZ_PROFILE=release for long runs.
#   FUZZ_PROFILE=release deploy/scripts/fuzz.sh 600     # a longer run by hand
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-20}
profile=--dev
[ "${FUZZ_PROFILE:-dev}" = release ] && profile=--release
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in event_parse query_parse; do
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run "$profile" --sanitizer none "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 | tail -n 4
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz: $target failed"; exit 1; }
done
