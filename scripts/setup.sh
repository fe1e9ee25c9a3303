#!/usr/bin/env bash
# Installs what GEM Backup & Restore needs on Debian 12 with Node 20: PostgreSQL 15 (the embedded
# database and pg_dump/pg_restore) and smbclient (SMB destinations), and for the tests (unless
# --runtime-only) OpenSSH, Samba, Chromium, strace and moto's S3 server; then the npm packages.
# Idempotent: only what is missing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v pg_dump >/dev/null || need+=(postgresql-client-15)
command -v smbclient >/dev/null || need+=(smbclient) # the agent's SMB destinations
if [ "${1:-}" != "--runtime-only" ]; then
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  [ -x /usr/sbin/smbd ] || need+=(samba)
  command -v chromium >/dev/null || need+=(chromium)
  command -v strace >/dev/null || need+=(strace) # test/faults/durability.test.ts
fi
# moto_server (Python moto: the one S3 server here with ListMultipartUploads, for test/offsite/sweep.test.ts)
# has no Debian package: pip installs it into a venv at a fixed path, linked into /usr/local/bin.
MOTO_VENV="${GEM_TEST_VENV:-/opt/gem-test-venv}"
MOTO_LINK_DIR="${GEM_TEST_BIN:-/usr/local/bin}"
need_moto=false
if [ "${1:-}" != "--runtime-only" ] && ! command -v moto_server >/dev/null; then
  need_moto=true
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if $need_moto; then
  if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
    echo "installing: moto[server] (pip, into $MOTO_VENV)"
    $SUDO python3 -m venv "$MOTO_VENV"
    if ! $SUDO "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check --retries 2 --timeout 30 \
      'moto[server]'; then
      echo "setup.sh: FAILED to install moto_server: pip install 'moto[server]' into $MOTO_VENV did not work" \
        "(is PyPI reachable from here?); test/offsite/sweep.test.ts needs it" >&2
      exit 1
    fi
  fi
  $SUDO ln -sfn "$MOTO_VENV/bin/moto_server" "$MOTO_LINK_DIR/moto_server"
  command -v moto_server >/dev/null || {
    echo "setup.sh: moto_server is in $MOTO_LINK_DIR, which is not on PATH" >&2
    exit 1
  }
fi
npm ci --no-audit --no-fund
