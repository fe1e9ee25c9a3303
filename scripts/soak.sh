#!/usr/bin/env bash
# The larger fault-injection run: the test/faults suite with more kills, corruptions, clients and a bigger table,
# repeated ROUNDS times with a new seed each round; every file's count line is collected and printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
REPORT="$(mktemp)"
export GEM_FAULTS_REPORT="$REPORT"
export GEM_FAULTS_CORRUPTIONS="${GEM_FAULTS_CORRUPTIONS:-10000}"
export GEM_FAULTS_KILLS="${GEM_FAULTS_KILLS:-20}"
export GEM_FAULTS_BIG_ROWS="${GEM_FAULTS_BIG_ROWS:-4000000}"
export GEM_FAULTS_CLIENTS="${GEM_FAULTS_CLIENTS:-200}"
status=0
for round in $(seq 1 "$ROUNDS"); do
  export GEM_FAULTS_SEED="$((20261128 + round))"
  echo "== soak round $round of $ROUNDS (seed $GEM_FAULTS_SEED)"
  npx vitest run test/faults --testTimeout=3600000 --hookTimeout=3600000 || status=1
done
echo "== fault counts"
cat "$REPORT"
rm -f "$REPORT"
exit "$status"
