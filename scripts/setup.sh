#!/usr/bin/env bash
# Installs what GEM Backup & Restore needs on Debian 12 with Node 20: PostgreSQL 15 (the embedded
# database and pg_dump/pg_restore), and for the tests OpenSSH, Samba + smbclient and Chromium; then
# the npm packages. Idempotent: only what is missing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v pg_dump >/dev/null || need+=(postgresql-client-15)
if [ "${1:-}" != "--runtime-only" ]; then
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  [ -x /usr/sbin/smbd ] || need+=(samba)
  command -v smbclient >/dev/null || need+=(smbclient)
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
npm ci --no-audit --no-fund
