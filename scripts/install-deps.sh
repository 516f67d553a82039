#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the demo need.
# Idempotent: packages already present are skipped; safe to run as root on a fresh machine.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git ca-certificates
  clang llvm libclang-rt-14-dev
  librdkafka-dev libavro-dev libjansson-dev libutf8proc-dev libyaml-dev
  libopenblas-dev libmicrohttpd-dev libssl-dev
  python3 python3-confluent-kafka python3-avro python3-numpy python3-yaml
  kcat curl jq yamllint shellcheck patchelf file
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
