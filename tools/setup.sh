#!/usr/bin/env bash
# Installs every Debian package vssfs needs to build, test and benchmark.
# Idempotent: packages already present are left alone; safe to run again.
# Usage: sudo tools/setup.sh            (prints what it installs)
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git
  # libraries
  fuse3 libfuse3-dev liblmdb-dev lmdb-utils libxxhash-dev xxhash liburing-dev
  libboost-filesystem-dev catch2 libtdb-dev libacl1-dev libcap-dev
  # Samba integration and its clients
  samba smbclient samba-vfs-modules tdb-tools
  # tests and benchmarks
  fio attr acl util-linux procps psmisc python3
  # FUSE peers for tools/bench --peers
  fuse-overlayfs
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${missing[*]}" >&2
  echo "setup: run as root (sudo $0) to install them" >&2
  exit 1
fi

echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
