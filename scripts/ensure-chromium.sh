#!/usr/bin/env bash
# Makes sure headless Chromium is there for the report screenshot test and prints its path on
# standard output. Installs Debian's `chromium` with apt-get when missing (CI runs as root on
# a clean machine). Where it cannot be installed, says so on standard error and prints
# nothing: the test then skips loudly, or fails when CI=true.
#   export OFFPEAK_TEST_CHROMIUM="$(bash scripts/ensure-chromium.sh)"
set -euo pipefail
find_chromium() {
  for c in /usr/bin/chromium "$(command -v chromium 2>/dev/null || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}
if path=$(find_chromium); then echo "$path"; exit 0; fi
bash "$(dirname "$0")/apt-install.sh" ensure-chromium chromium chromium
find_chromium
