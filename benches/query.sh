#!/usr/bin/env bash
# Query speed against DuckDB (issue 22 point 9): the TRE's job path against DuckDB on the
# same Parquet file, for COUNT(*), COUNT(DISTINCT patient_pseudonym) and AVG(numeric_value)
# by snomed_code over about 10M clinical_events rows (benches/query.sql and
# benches/peers/duckdb_query.sql). Each tool runs in its own process per table, on 2
# threads, REPEAT times; the table prints the median wall time, the TRE's phases (median)
# and each process's peak RSS. The TRE job runs as the job's child process does: under the
# project's rlimits (address space = the job memory limit), then run_query, then the
# differencing guard (against an empty ledger).
#
#   benches/query.sh                       # 1,070,000 patients (about 10M event rows)
#   PATIENTS=200000 REPEAT=5 benches/query.sh
#
# Builds `tre` and the driver (`cargo build --release --bin tre-bench-query`) in release mode unless TRE and
# QUERY_BENCH are given; DuckDB is the pinned one of tests/interop/requirements.txt.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
. benches/query_ws.sh
PATIENTS=${PATIENTS:-1070000}
REPEAT=${REPEAT:-3}
WORK=${WORK:-$repo/target/query-bench}
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

build_tools
py="$(bash tests/interop/setup_venv.sh | tail -n 1)"
data="$WORK/p$PATIENTS"
make_ws "$PATIENTS" "$data"
events="$data/extract/clinical_events.parquet"
rows=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['tables']['clinical_events']['rows_written'])" \
    "$data/extract/manifest.json")
say "$rows event rows ($(du -m "$events" | cut -f1) MB)"

runs="$WORK/runs.jsonl"
: >"$runs"
for t in count patients mean; do
    say "TRE: $t"
    env -i MALLOC_ARENA_MAX=2 "$QUERY_BENCH" --workspace "$data/ws" --tables benches/query.sql --only "$t" --repeat "$REPEAT" |
        sed 's/^{/{"tool":"tre",/' >>"$runs"
    say "DuckDB: $t"
    "$py" benches/peers/duckdb_query.py --queries benches/peers/duckdb_query.sql --name "$t" \
        --events "$events" --repeat "$REPEAT" >>"$runs"
done
say "DuckDB: per-patient"
"$py" benches/peers/duckdb_query.py --queries benches/peers/duckdb_query.sql --name per-patient \
    --events "$events" --out "$WORK/duckdb-per-patient.parquet" --repeat "$REPEAT" >>"$runs"

python3 - "$runs" "$rows" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = int(sys.argv[2])
def of(tool, table):
    return [r for r in runs if r["tool"] == tool and r["table"] == table]
def med(rs, k):
    return statistics.median(r[k] for r in rs)
errors = [r for r in runs if "error" in r]
if errors:
    sys.exit(f"query.sh: FATAL: a TRE job failed: {errors[0]['error']}")
print(f"{rows:,} clinical_events rows; median of {len(of('tre', 'count'))} runs; 2 threads each.\n")
print("| table | TRE job s | DuckDB s | TRE / DuckDB | TRE peak RSS MB (limit) | DuckDB peak RSS MB | verdict |")
print("|---|---:|---:|---:|---:|---:|---|")
for t in ["count", "patients", "mean"]:
    tre, duck = of("tre", t), of("duckdb", t)
    ts, ds = med(tre, "seconds"), med(duck, "seconds")
    print(f"| {t} | {ts:.2f} | {ds:.2f} | {ts / ds:.2f}x | {max(r['peak_rss_kib'] for r in tre) / 1024:.0f} "
          f"({tre[0]['memory_limit_kib'] / 1024:.0f}) | {max(r['peak_rss_kib'] for r in duck) / 1024:.0f} | {tre[0]['verdict']} |")
pp = of("duckdb", "per-patient")
print(f"\nDuckDB doing the TRE's own work (one row per (code, patient) with rows, non-null count and sum, "
      f"written as zstd Parquet): {med(pp, 'seconds'):.2f} s, peak RSS {max(r['peak_rss_kib'] for r in pp) / 1024:.0f} MB.\n")
print("TRE phases (median s): plan = datasets, SQL, table recognised; check = patients checked by value; "
      "aggregate = per (cell, patient) and per cell, of which membership = writing membership.parquet; "
      "judge = disclosure checks and the job's files; guard = differencing guard (empty ledger).\n")
print("| table | plan | check | aggregate | (membership) | judge | guard | total | membership.parquet MB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in ["count", "patients", "mean"]:
    tre = of("tre", t)
    print(f"| {t} | " + " | ".join(f"{med(tre, k):.2f}" for k in
          ["plan", "patient_check", "aggregate", "membership", "judge", "guard", "seconds"])
          + f" | {tre[0]['membership_bytes'] / 1e6:.1f} |")
PY
