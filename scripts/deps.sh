#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the dev cluster need.
# Idempotent: runs apt-get update/install only when something is missing.
set -euo pipefail

PKGS=(
  build-essential pkg-config clang libclang-rt-14-dev
  libevent-dev libssl-dev openssl libsodium-dev libhiredis-dev libnng-dev
  libmsgpack-dev check liblmdb-dev lmdb-utils libsqlite3-dev libinih-dev libjansson-dev uthash-dev
  libreadline-dev # sealpost chat: the input line (client/cl_chat.c)
  libcurl4-openssl-dev etcd-server etcd-client
  redis-server redis-tools curl jq procps iproute2 gnuplot-nox python3 python3-yaml
  docker-compose # deploy_files_itest: `docker-compose config` checks deploy/compose (no daemon)
)

# One dpkg-query for all of them: the dev cluster runs this at every start. It exits 1
# when any package is unknown to dpkg (never installed): that is the case this script is
# for, so its status is not an error here.
installed=" $({ dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true; } |
  awk '$2 == "installed" { printf "%s ", $1 }')"
missing=()
for p in "${PKGS[@]}"; do
  [[ "$installed" == *" $p "* ]] || missing+=("$p")
done
# Node/npm serve only the crypto interop tests; an image may ship its own build
# (nodesource's nodejs bundles npm and conflicts with Debian's npm package).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
