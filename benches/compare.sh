#!/usr/bin/env bash
# Yardstick (issue 5): `tre extract` against peers doing the same job on clinical_events:
# DuckDB (SQL; sha256(key_hex || nhs) as DuckDB has no HMAC), polars (real HMAC from
# Python's hmac) and, optionally, pandas on a slice. Measures wall time and peak RSS with
# /usr/bin/time -v, output size and rows written; checks that every full-input run keeps
# the same number of rows and that tre's pseudonyms equal Python's HMAC (1000-row sample
# plus the polars peer's distinct set). Prints ONE markdown table and the tre thread
# speed-up (--threads 1 vs --threads 2).
#
# Usage: benches/compare.sh
# Environment:
#   PATIENTS=1000000      patients to generate (tre generate --no-faults --seed 1)
#   WORK=target/compare   working directory (input is regenerated only when PATIENTS changes)
#   POLARS_HMAC=cache     polars pseudonyms: cache (hash each distinct number once, join
#                         back) or map_elements (Python call per row); "both" runs both
#   PANDAS_ROWS=1000000   pandas runs on the first N rows; 0 skips pandas
#   TRE=path              use this tre binary instead of `cargo build --release`
#   POLICY=file           default policies/bench.toml
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PATIENTS="${PATIENTS:-1000000}"
WORK="${WORK:-$repo/target/compare}"
POLARS_HMAC="${POLARS_HMAC:-cache}"
PANDAS_ROWS="${PANDAS_ROWS:-1000000}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
peers="$repo/benches/peers"
codelist="$repo/policies/codelists/type1-opt-out.csv"
policy="${POLICY:-$repo/policies/bench.toml}"

say() { echo "compare.sh: $*" >&2; }
die() { say "FATAL: $*"; exit 1; }

py="$(bash "$repo/tests/interop/setup_venv.sh" | tail -n 1)"
if [ ! -x /usr/bin/time ]; then
    say "installing GNU time (apt-get install -y time)"
    apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; } \
        || die "cannot install GNU time; /usr/bin/time -v is needed"
fi
if [ -z "${TRE:-}" ]; then
    cargo build --release --bin tre >&2
    TRE="${CARGO_TARGET_DIR:-$repo/target}/release/tre"
fi
[ -x "$TRE" ] || die "tre binary $TRE not found"
[ -f "$policy" ] || die "$policy not found (the bench policy: clinical_events, nhs_number pseudonymised)"

# Input (cached per PATIENTS) and key.
input="$WORK/in"
if [ "$(cat "$WORK/in.patients" 2>/dev/null)" != "$PATIENTS" ]; then
    rm -rf "$input" "$WORK/in.patients"
    say "generating $PATIENTS patients into $input"
    "$TRE" generate --patients "$PATIENTS" --seed 1 --no-faults --out "$input" >&2
    echo "$PATIENTS" >"$WORK/in.patients"
fi
[ -f "$WORK/key" ] || "$TRE" keygen --out "$WORK/key" >&2
events="$input/clinical_events.csv"
opt_outs="$input/opt_outs.txt"
as_of="$(date +%Y-%m-%d)"

mkdir -p "$WORK/time" "$WORK/logs"
runs="$WORK/runs.tsv"
: >"$runs"

# measure NAME CMD...: run under /usr/bin/time -v; logs in $WORK/logs, timings in $WORK/time.
measure() {
    local name="$1"
    shift
    cat "$events" >/dev/null # same warm page cache for every tool
    say "running $name"
    if ! /usr/bin/time -v -o "$WORK/time/$name.txt" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err"; then
        cat "$WORK/logs/$name.err" >&2
        die "$name failed (logs in $WORK/logs/$name.*)"
    fi
}

tre_run() { # tre_run NAME [extra args]
    local name="$1"
    shift
    local out="$WORK/out-$name"
    rm -rf "$out" "$out.quarantine"
    measure "$name" "$TRE" --quiet extract --policy "$policy" --input "$input" --opt-outs "$opt_outs" \
        --key-file "$WORK/key" --out "$out" --opt-outs-as-of "$as_of" "$@"
}

tre_run tre
rows_read="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tables"]["clinical_events"]["rows_read"])' \
    "$WORK/out-tre/manifest.json")"
printf 'tre\t%s\t%s\t%s\t1\n' "$WORK/time/tre.txt" "$WORK/out-tre/clinical_events.parquet" "$rows_read" >>"$runs"
for n in 1 2; do
    tre_run "tre-t$n" --threads "$n"
    printf 'tre --threads %s\t%s\t%s\t%s\t1\n' "$n" "$WORK/time/tre-t$n.txt" \
        "$WORK/out-tre-t$n/clinical_events.parquet" "$rows_read" >>"$runs"
done

common=(--input "$events" --opt-outs "$opt_outs" --codelist "$codelist" --key-file "$WORK/key")
measure duckdb "$py" "$peers/duckdb_extract.py" "${common[@]}" --out "$WORK/duckdb.parquet"
printf 'duckdb (SQL, sha256 not HMAC)\t%s\t%s\t%s\t1\n' "$WORK/time/duckdb.txt" "$WORK/duckdb.parquet" "$rows_read" >>"$runs"

modes="$POLARS_HMAC"
[ "$modes" = "both" ] && modes="cache map_elements"
polars_out=""
for mode in $modes; do
    measure "polars-$mode" "$py" "$peers/polars_extract.py" "${common[@]}" --hmac "$mode" \
        --out "$WORK/polars-$mode.parquet"
    printf 'polars (HMAC: %s)\t%s\t%s\t%s\t1\n' "$mode" "$WORK/time/polars-$mode.txt" \
        "$WORK/polars-$mode.parquet" "$rows_read" >>"$runs"
    polars_out="${polars_out:-$WORK/polars-$mode.parquet}"
done

if [ "$PANDAS_ROWS" -gt 0 ]; then
    measure pandas "$py" "$peers/pandas_extract.py" "${common[@]}" --rows "$PANDAS_ROWS" \
        --out "$WORK/pandas.parquet"
    pandas_read="$("$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["rows_read"])' \
        "$WORK/logs/pandas.out")"
    comparable=0
    [ "$pandas_read" = "$rows_read" ] && comparable=1
    printf 'pandas (first %s rows)\t%s\t%s\t%s\t%s\n' "$pandas_read" "$WORK/time/pandas.txt" \
        "$WORK/pandas.parquet" "$pandas_read" "$comparable" >>"$runs"
fi

echo
echo "## tre extract vs peers: $PATIENTS patients, $rows_read clinical_events rows ($(nproc) cores)"
echo
status=0
"$py" "$peers/report.py" "$runs" || status=1
"$py" "$peers/agree.py" --input "$events" --key-file "$WORK/key" \
    --tre "$WORK/out-tre/clinical_events.parquet" --polars "$polars_out" --sample 1000 || status=1
for n in 1 2; do # informational: the contract promises determinism per run, not across --threads
    if cmp -s "$WORK/out-tre/clinical_events.parquet" "$WORK/out-tre-t$n/clinical_events.parquet"; then
        echo "note: tre --threads $n wrote the same bytes as the default run"
    else
        echo "note: tre --threads $n wrote different bytes from the default run (same rows: see above)"
    fi
done
exit "$status"
