#!/usr/bin/env bash
# Headless, time-bounded locust run against the gateway on this machine, then a summary of
# p50/p95/p99 and RPS per endpoint in docs/loadtest.md and docs/loadtest.json.
#
#   loadtests/run.sh [--host http://127.0.0.1:8000] [--users 8] [--spawn-rate 2] [--run-time 60s]
#                    [--out results/loadtest/<timestamp>] [--report-dir docs] [--no-wait]
#
# The gateway must already be running (e.g. `make run` or `docker compose up`). Only loopback hosts
# are accepted. Environment: PYTHON / LOCUST override the interpreters (default: .venv/bin/...).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST="http://127.0.0.1:8000"
USERS=8
SPAWN_RATE=2
RUN_TIME="60s"
OUT=""
REPORT_DIR="docs"
WAIT_READY=1
PYTHON="${PYTHON:-.venv/bin/python}"
LOCUST="${LOCUST:-.venv/bin/locust}"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --users|-u) USERS="$2"; shift 2 ;;
    --spawn-rate|-r) SPAWN_RATE="$2"; shift 2 ;;
    --run-time|-t) RUN_TIME="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --report-dir) REPORT_DIR="$2"; shift 2 ;;
    --no-wait) WAIT_READY=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# Loads go to this machine only.
LOOPBACK='^https?://(127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|localhost|\[::1\])(:[0-9]{1,5})?/?$'
if [[ ! "$HOST" =~ $LOOPBACK ]]; then
  echo "refusing to load-test $HOST: only loopback hosts (127.0.0.1) are allowed" >&2
  exit 2
fi
[[ "$USERS" =~ ^[0-9]+$ && "$USERS" -ge 1 && "$USERS" -le 500 ]] || { echo "--users must be 1..500" >&2; exit 2; }
[[ "$RUN_TIME" =~ ^[0-9]+[smh]?$ ]] || { echo "--run-time like 60s, 5m" >&2; exit 2; }

OUT="${OUT:-results/loadtest/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

if [[ "$WAIT_READY" == 1 ]]; then
  # Up to 60 s for the gateway's /readyz (Redis and the generator reachable).
  "$PYTHON" - "$HOST" <<'PY'
import sys, time, urllib.error, urllib.request
url = sys.argv[1].rstrip("/") + "/readyz"
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(url, timeout=3)
        break
    except (urllib.error.URLError, OSError) as exc:
        if time.monotonic() > deadline:
            sys.exit(f"gateway not ready at {url}: {exc}")
        time.sleep(1)
PY
fi

# --stop-timeout lets in-flight requests finish; locust exits non-zero if any request failed, which
# is reported after the summary is written.
set +e
"$LOCUST" -f loadtests/locustfile.py --host "$HOST" --headless \
  --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" --stop-timeout 10 \
  --csv "$OUT/locust" --only-summary --loglevel WARNING
LOCUST_RC=$?
set -e

# The locustfile writes *_stats_final.csv once the users have stopped; locust's own *_stats.csv is
# refreshed every second and misses the end of the run, so it is only the fallback.
STATS="$OUT/locust_stats_final.csv"
[[ -f "$STATS" ]] || STATS="$OUT/locust_stats.csv"
if [[ ! -f "$STATS" ]]; then
  echo "locust wrote no stats (exit $LOCUST_RC)" >&2
  exit 1
fi

"$PYTHON" loadtests/summarize.py --stats "$STATS" \
  --json "$REPORT_DIR/loadtest.json" --md "$REPORT_DIR/loadtest.md" \
  --command "loadtests/run.sh --host $HOST --users $USERS --spawn-rate $SPAWN_RATE --run-time $RUN_TIME" \
  --params "{\"host\": \"$HOST\", \"users\": $USERS, \"spawn_rate\": \"$SPAWN_RATE\", \"run_time\": \"$RUN_TIME\", \"csv\": \"$OUT/locust\"}"

if [[ "$LOCUST_RC" -ne 0 ]]; then
  echo "locust exited $LOCUST_RC: some requests failed (see the Failures table in $REPORT_DIR/loadtest.md)" >&2
fi
exit "$LOCUST_RC"
