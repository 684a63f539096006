#!/usr/bin/env bash
# Installs one Debian package with apt-get, for the scripts/ensure-*.sh scripts: CI runs as
# root on a clean machine; anywhere else this says what to install and fails. Everything goes
# to standard error, so that the caller's standard output stays the one line it prints.
#   bash scripts/apt-install.sh CALLER PACKAGE NAME   (NAME: how messages call it)
set -euo pipefail
caller=$1
package=$2
name=$3
log() { echo "$caller: $*" >&2; }
if [ "$(id -u)" -ne 0 ]; then
  log "$name is not installed and this is not root: install Debian's $package package"
  exit 1
fi
log "installing $name with apt-get"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
