#!/usr/bin/env bash
# Yardstick (issue 5): `tre extract` against peers doing the same job on clinical_events:
# DuckDB (SQL; sha256(key_hex || nhs) as DuckDB has no HMAC), polars (real HMAC from
# Python's hmac) and, optionally, pandas on a slice. Measures wall time and peak RSS with
# /usr/bin/time -v, output size and rows written; checks that every full-input run keeps
# the same number of rows and that tre's pseudonyms equal Python's HMAC (1000-row sample
# plus the polars peer's distinct set). Runs every row order in ONE run (ORDERS: patient =
# each patient's rows together; event = rows by date, patients interleaved, as many GP
# system exports are) and prints, per order, one markdown table with the tre thread
# speed-up (--threads 1 vs --threads 2), then a summary of tre against DuckDB and polars
# for every order, output sizes, and whether every --threads wrote identical bytes.
#
# Usage: benches/compare.sh
# Environment:
#   PATIENTS=1000000      patients to generate (tre generate --no-faults --seed 1)
#   WORK=target/compare   working directory (inputs are regenerated only when PATIENTS changes)
#   ORDERS="patient event" row orders to compare (tre generate --order)
#   POLARS_HMAC=cache     polars pseudonyms: cache (hash each distinct number once, join
#                         back) or map_elements (Python call per row); "both" runs both
#   PANDAS_ROWS=1000000   pandas runs on the first N rows of the first order; 0 skips pandas
#   TRE=path              use this tre binary instead of `cargo build --release`
#   POLICY=file           default policies/bench.toml
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PATIENTS="${PATIENTS:-1000000}"
WORK="${WORK:-$repo/target/compare}"
POLARS_HMAC="${POLARS_HMAC:-cache}"
PANDAS_ROWS="${PANDAS_ROWS:-1000000}"
ORDERS="${ORDERS:-patient event}"
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

[ -f "$WORK/key" ] || "$TRE" keygen --out "$WORK/key" >&2
as_of="$(date +%Y-%m-%d)"
mkdir -p "$WORK/time" "$WORK/logs"

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

# run_order ORDER: every tool on that order's input; rows in $WORK/runs-ORDER.tsv.
run_order() {
    local order="$1"
    input="$WORK/in-$order"
    if [ "$(cat "$input.patients" 2>/dev/null)" != "$PATIENTS" ]; then
        rm -rf "$input" "$input.patients"
        say "generating $PATIENTS patients in $order order into $input"
        "$TRE" generate --patients "$PATIENTS" --seed 1 --no-faults --order "$order" --out "$input" >&2
        echo "$PATIENTS" >"$input.patients"
    fi
    events="$input/clinical_events.csv"
    opt_outs="$input/opt_outs.txt"
    local runs="$WORK/runs-$order.tsv"
    : >"$runs"

    tre_run "tre-$order"
    rows_read="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tables"]["clinical_events"]["rows_read"])' \
        "$WORK/out-tre-$order/manifest.json")"
    printf 'tre\t%s\t%s\t%s\t1\n' "$WORK/time/tre-$order.txt" "$WORK/out-tre-$order/clinical_events.parquet" "$rows_read" >>"$runs"
    for n in 1 2; do
        tre_run "tre-$order-t$n" --threads "$n"
        printf 'tre --threads %s\t%s\t%s\t%s\t1\n' "$n" "$WORK/time/tre-$order-t$n.txt" \
            "$WORK/out-tre-$order-t$n/clinical_events.parquet" "$rows_read" >>"$runs"
    done

    local common=(--input "$events" --opt-outs "$opt_outs" --codelist "$codelist" --key-file "$WORK/key")
    measure "duckdb-$order" "$py" "$peers/duckdb_extract.py" "${common[@]}" --out "$WORK/duckdb-$order.parquet"
    printf 'duckdb (SQL, sha256 not HMAC)\t%s\t%s\t%s\t1\n' "$WORK/time/duckdb-$order.txt" \
        "$WORK/duckdb-$order.parquet" "$rows_read" >>"$runs"

    local modes="$POLARS_HMAC"
    [ "$modes" = "both" ] && modes="cache map_elements"
    polars_out=""
    for mode in $modes; do
        measure "polars-$mode-$order" "$py" "$peers/polars_extract.py" "${common[@]}" --hmac "$mode" \
            --out "$WORK/polars-$mode-$order.parquet"
        printf 'polars (HMAC: %s)\t%s\t%s\t%s\t1\n' "$mode" "$WORK/time/polars-$mode-$order.txt" \
            "$WORK/polars-$mode-$order.parquet" "$rows_read" >>"$runs"
        polars_out="${polars_out:-$WORK/polars-$mode-$order.parquet}"
    done

    if [ "$PANDAS_ROWS" -gt 0 ] && [ "$order" = "${ORDERS%% *}" ]; then
        measure "pandas-$order" "$py" "$peers/pandas_extract.py" "${common[@]}" --rows "$PANDAS_ROWS" \
            --out "$WORK/pandas-$order.parquet"
        local pandas_read
        pandas_read="$("$py" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["rows_read"])' \
            "$WORK/logs/pandas-$order.out")"
        local comparable=0
        [ "$pandas_read" = "$rows_read" ] && comparable=1
        printf 'pandas (first %s rows)\t%s\t%s\t%s\t%s\n' "$pandas_read" "$WORK/time/pandas-$order.txt" \
            "$WORK/pandas-$order.parquet" "$pandas_read" "$comparable" >>"$runs"
    fi
}

first_mode="$POLARS_HMAC"
[ "$first_mode" = "both" ] && first_mode="cache"

report_order() { # report_order ORDER: its table and checks; non-zero when tools disagree
    local order="$1" ok=0
    input="$WORK/in-$order"
    events="$input/clinical_events.csv"
    echo
    echo "### $order order: $PATIENTS patients, $(($(wc -l <"$events") - 1)) clinical_events rows ($(nproc) cores)"
    echo
    "$py" "$peers/report.py" "$WORK/runs-$order.tsv" || ok=1
    "$py" "$peers/agree.py" --input "$events" --key-file "$WORK/key" \
        --tre "$WORK/out-tre-$order/clinical_events.parquet" \
        --polars "$WORK/polars-$first_mode-$order.parquet" --sample 1000 || ok=1
    for n in 1 2; do
        if cmp -s "$WORK/out-tre-$order/clinical_events.parquet" "$WORK/out-tre-$order-t$n/clinical_events.parquet"; then
            echo "identical: tre --threads $n wrote the same bytes as the default run"
        else
            echo "DIFFERENT: tre --threads $n wrote different bytes from the default run"
            ok=1
        fi
    done
    return "$ok"
}

for order in $ORDERS; do
    run_order "$order"
done

echo
echo "## tre extract vs peers, every row order in one run"
status=0
for order in $ORDERS; do
    report_order "$order" || status=1
done
echo
echo "### summary: time and output size against tre, per row order"
echo
"$py" "$peers/report.py" --summary $(for o in $ORDERS; do echo "$o=$WORK/runs-$o.tsv"; done) || status=1
exit "$status"
