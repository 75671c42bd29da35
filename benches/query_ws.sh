# Sourced by benches/query.sh, benches/usefulness.sh and benches/query_memory.sh: build
# `tre` and the query bench driver in release mode, and a workspace over generated demo
# data.
#
#   build_tre                -> TRE (release `tre`, unless TRE is given)
#   make_extract PATIENTS DIR -> DIR/extract (the Parquet files of `tre generate --seed 1`),
#                               kept between runs
#   make_ws PATIENTS DIR     -> DIR/ws (project demo, analyst "analyst", dataset installed)
#                               over make_extract's files; kept between runs.
# Environment: TRE (a prebuilt tre binary), QUERY_BENCH (a prebuilt driver), MAX_ROWS
# (the project's max_result_rows, default 100,000,000), LIMIT_MB (job memory limit,
# default the policy's 1024).

say() { echo "$(basename "$0"): $*" >&2; }
die() { say "FATAL: $*"; exit 1; }

build_tre() {
    if [ -z "${TRE:-}" ]; then
        nice -n 5 cargo build --release --bin tre >&2
        TRE="${CARGO_TARGET_DIR:-$repo/target}/release/tre"
    fi
    [ -x "$TRE" ] || die "tre binary $TRE not found"
}

build_tools() {
    build_tre
    if [ -z "${QUERY_BENCH:-}" ]; then
        nice -n 5 cargo build --release --bin tre-bench-query >&2
        QUERY_BENCH="${CARGO_TARGET_DIR:-$repo/target}/release/tre-bench-query"
    fi
    [ -x "$QUERY_BENCH" ] || die "the query bench driver was not built (cargo build --release --bin tre-bench-query)"
}

make_extract() {
    local patients=$1 dir=$2 today
    today=$(date -u +%F)
    mkdir -p "$dir"
    if [ ! -f "$dir/extract/manifest.json" ]; then
        # A new extract: any workspace over the old one goes too.
        rm -rf "$dir/in" "$dir/extract" "$dir/ws" "$dir/ws.done"
        say "generating $patients patients"
        "$TRE" -q generate --patients "$patients" --seed 1 --no-faults --out "$dir/in"
        "$TRE" -q keygen --out "$dir/key"
        say "extracting"
        "$TRE" -q extract --policy policies/demo.toml --input "$dir/in" --opt-outs "$dir/in/opt_outs.txt" \
            --opt-outs-as-of "$today" --key-file "$dir/key" --out "$dir/extract"
        rm -rf "$dir/in" # only the extract is needed from here on
    fi
}

make_ws() {
    local dir=$2
    make_extract "$1" "$dir"
    if [ ! -f "$dir/ws.done" ]; then
        rm -rf "$dir/ws"
        # The demo policy, with room for every (cell, patient) pair of a 10M-row table.
        sed "s/^max_result_rows = .*/max_result_rows = ${MAX_ROWS:-100000000}/" policies/demo.toml >"$dir/policy.toml"
        if [ -n "${LIMIT_MB:-}" ]; then
            sed -i "s/^max_query_seconds = .*/&\nmax_query_memory_mb = $LIMIT_MB/" "$dir/policy.toml"
        fi
        "$TRE" -q admin init --workspace "$dir/ws"
        (umask 077 && "$TRE" admin user add --workspace "$dir/ws" analyst >"$dir/analyst.token")
        "$TRE" -q admin project add --workspace "$dir/ws" "$dir/policy.toml"
        "$TRE" -q admin dataset add --workspace "$dir/ws" demo "$dir/extract"
        touch "$dir/ws.done"
    fi
}
