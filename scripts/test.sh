#!/usr/bin/env bash
# The test command (README): formatting, lints, then every unit and integration test.
# Needs only the Rust toolchain: crates come from crates.io, protobuf is compiled in pure Rust
# (protox), and the tests build their own fixtures. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
export OFFPEAK_TEST_POSTGRES_URL="${OFFPEAK_TEST_POSTGRES_URL:-$(bash scripts/ensure-postgres.sh)}"
export OFFPEAK_TEST_CHROMIUM="${OFFPEAK_TEST_CHROMIUM:-$(bash scripts/ensure-chromium.sh)}"
cargo test --workspace --locked
bash scripts/check-chart.sh
