#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, and nothing when it is all there:
# - Debian packages: the real servers and clients the black-box tests drive;
# - a Python venv in .venv with boto3, the AWS CLI, dnspython and pytest (versions pinned in
#   tests/requirements.txt);
# - the AWS SDK for JavaScript v3 clients in tests/js/node_modules (tests/js/package.json).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages and the command each provides (checked before installing).
declare -A PACKAGES=(
  [openssl]=openssl
  [named]=bind9
  [tsig-keygen]=bind9-utils
  [pg_ctlcluster]=postgresql
  [mariadbd]=mariadb-server
  [redis-server]=redis-server
  [faketime]=faketime
  [dig]=bind9-dnsutils
  [haproxy]=haproxy
  [wrk]=wrk
  [curl]=curl
  [ip]=iproute2
  [etcd]=etcd-server
  [protoc]=protobuf-compiler
  [node]=nodejs
  [npm]=npm
  [promtool]=prometheus
  [php]=php-cli
  [rsync]=rsync
  [sshd]=openssh-server
  [ssh]=openssh-client
  [chromium]=chromium
  # DynamoDB Local (its jar comes from npm, tests/js) for test_store_vs_dynamodb_local.py.
  [java]=default-jre-headless
)

missing=()
for command in "${!PACKAGES[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${PACKAGES[$command]}")
done
# The etcd client crate compiles etcd's .proto files, which import protobuf's well-known types.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import boto3, pytest, dns' 2>/dev/null \
   || [ tests/requirements.txt -nt .venv/.installed ]; then
  echo "==> python venv (.venv) with tests/requirements.txt"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  touch .venv/.installed
fi

if [ ! -d tests/js/node_modules ] || [ tests/js/package.json -nt tests/js/node_modules ]; then
  echo "==> npm install in tests/js (AWS SDK for JavaScript v3)"
  npm install --prefix tests/js --no-audit --no-fund --silent
  touch tests/js/node_modules
fi
