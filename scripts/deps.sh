#!/usr/bin/env bash
# Installs what skiff needs to build and run on a Debian or Ubuntu machine, if missing.
# Sourced by scripts/up.sh and scripts/test.sh; safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "skiff: run this as root (skiff creates network namespaces, bridges and mounts)" >&2
  exit 1
fi

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need+=(rustup)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "skiff: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# rust-toolchain.toml pins the compiler; rustup installs it on first use.
cargo --version >/dev/null
