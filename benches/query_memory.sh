#!/usr/bin/env bash
# Query-job memory benchmark (issue 13): a `tre` query job over an installed dataset at
# least twice the job's memory limit on disk, run by `tre serve` as analysts' jobs are, and
# its peak RSS (the child process's VmHWM, recorded by the server in the job record) against
# that limit. Streams or it fails: the job's address space is capped at LIMIT_MB.
#
#   benches/query_memory.sh                           # 8M patients (~80M event rows), 256 MB limit
#   PATIENTS=2000000 LIMIT_MB=64 benches/query_memory.sh
#
# Needs GNU time (`apt-get install -y time`) for `dataset add`; the server measures the job. Builds `tre` in release mode
# unless TRE=path is given. Fails loudly if the dataset is not at least 2x the limit.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PATIENTS=${PATIENTS:-8000000}
LIMIT_MB=${LIMIT_MB:-256}
PORT=${PORT:-18473}
WORK=${WORK:-$repo/target/query-memory}
. benches/query_ws.sh

build_tre
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# Inputs and the extract are kept between runs of the same size.
data="$WORK/p$PATIENTS"
make_extract "$PATIENTS" "$data"
events_mb=$(du -m "$data/extract/clinical_events.parquet" | cut -f1)
rows=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['tables']['clinical_events']['rows_written'])" \
    "$data/extract/manifest.json")
[ "$events_mb" -ge $((2 * LIMIT_MB)) ] ||
    die "clinical_events.parquet is $events_mb MB, less than twice the $LIMIT_MB MB limit: raise PATIENTS"

# A fresh workspace whose project caps each job at LIMIT_MB.
ws="$WORK/ws"
rm -rf "$ws" "$WORK/policy.toml"
sed "s/^max_query_seconds = .*/&\nmax_query_memory_mb = $LIMIT_MB/" policies/demo.toml >"$WORK/policy.toml"
grep -q "^max_query_memory_mb = $LIMIT_MB$" "$WORK/policy.toml" || die "could not set the memory limit in the policy"
"$TRE" -q admin init --workspace "$ws"
(umask 077 && "$TRE" admin user add --workspace "$ws" analyst >"$WORK/analyst.token")
"$TRE" -q admin project add --workspace "$ws" "$WORK/policy.toml"
say "installing the dataset (hashes verified once, streaming)"
/usr/bin/env time -v "$TRE" -q admin dataset add --workspace "$ws" demo "$data/extract" 2>"$WORK/dataset-add.time" ||
    { cat "$WORK/dataset-add.time" >&2; die "dataset add failed"; }

"$TRE" serve --workspace "$ws" --listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/api/me" || true)
    [ "$code" = 401 ] && break
    sleep 0.2
done

cat >"$WORK/q.sql" <<'SQL'
SELECT snomed_code, date_part('year', event_date) AS year, COUNT(*) AS n
FROM clinical_events GROUP BY snomed_code, date_part('year', event_date)
SQL
say "running the job ($rows event rows, $events_mb MB on disk, limit $LIMIT_MB MB)"
"$TRE" -q job submit --server "http://127.0.0.1:$PORT" --token-file "$WORK/analyst.token" --project demo \
    --sql "$WORK/q.sql" --purpose "memory benchmark" --wait >"$WORK/status.json"
python3 - "$WORK/status.json" "$rows" "$events_mb" "$LIMIT_MB" "$WORK/dataset-add.time" <<'PY'
import json, re, sys
status, rows, mb, limit, add_time = sys.argv[1:]
s = json.load(open(status))
if s.get("state") != "succeeded" or s.get("peak_rss_kib") is None:
    sys.exit(f"query_memory.sh: FATAL: the job did not succeed: {s.get('state')}: {s.get('reason')}")
peak = s["peak_rss_kib"] / 1024
add = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(add_time).read())
add_mb = int(add.group(1)) / 1024 if add else float("nan")
print("| event rows | dataset on disk MB | job memory limit MB | job state | job peak RSS MB | `dataset add` peak RSS MB |")
print("|---:|---:|---:|---|---:|---:|")
print(f"| {int(rows):,} | {mb} | {limit} | {s.get('state')} | {peak:.0f} | {add_mb:.0f} |")
if peak > int(limit):
    sys.exit(f"query_memory.sh: FATAL: peak RSS {peak:.0f} MB is over the {limit} MB limit")
PY
