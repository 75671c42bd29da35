#!/usr/bin/env bash
# Scale-out benchmark (issue 24): the event-order extract (policies/bench.toml, clinical
# events only) embedded, then with its pseudonym stage on a loopback Ballista cluster of a
# scheduler and 1, then 2, trusted executors (`tre cluster`, feature `cluster`). Checks
# that every run wrote the same bytes, and prints one markdown table: wall time, rows
# written, and the cluster jobs the run sent.
#
# Usage: benches/cluster.sh
# Environment:
#   PATIENTS=100000     patients to generate (tre generate --order event --no-faults --seed 1)
#   WORK=target/cluster-bench  working directory (inputs regenerated when PATIENTS changes)
#   TRE=path            the tre binary (default: `cargo build --features cluster`, the debug
#                       build: building Ballista's tree in release costs about an hour on 2
#                       shared cores; the README's figures are TRE=target/release/tre)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PATIENTS="${PATIENTS:-100000}"
WORK="${WORK:-$repo/target/cluster-bench}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
policy="$repo/policies/bench.toml"
say() { echo "cluster.sh: $*" >&2; }

if [[ -z "${TRE:-}" ]]; then
    cargo build --features cluster -q
    TRE="$repo/target/debug/tre"
fi

input="$WORK/in-$PATIENTS"
if [[ ! -d "$input" ]]; then
    say "generating $PATIENTS patients (event order)"
    rm -rf "$WORK"/in-*
    "$TRE" -q generate --patients "$PATIENTS" --seed 1 --order event --no-faults --out "$input"
fi
key="$WORK/project.key"
[[ -f "$key" ]] || "$TRE" keygen --out "$key" >/dev/null
today="$(date +%F)"

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

run_extract() { # out, extra args...
    local out="$1"; shift
    rm -rf "$out" "$out.quarantine"
    local t0 t1
    t0=$(date +%s.%N)
    "$TRE" -q extract --policy "$policy" --input "$input" --opt-outs "$input/opt_outs.txt" \
        --opt-outs-as-of "$today" --key-file "$key" --out "$out" "$@"
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1-$t0:.1f}')"
}

echo "| engine | wall s | rows written | same bytes as embedded |"
echo "| --- | ---: | ---: | --- |"
t=$(run_extract "$WORK/out-embedded")
rows=$(python3 -c "import json;m=json.load(open('$WORK/out-embedded/manifest.json'));print(sum(t['rows_written'] for t in m['tables'].values()))")
echo "| embedded (--threads 2) | $t | $rows | - |"

for n in 1 2; do
    sp=$(port)
    "$TRE" cluster scheduler --listen "127.0.0.1:$sp" 2>"$WORK/scheduler-$n.log" & pids+=($!)
    wait_port "$sp"
    for i in $(seq 1 "$n"); do
        fp=$(port); gp=$(port)
        "$TRE" cluster executor --scheduler "127.0.0.1:$sp" --port "$fp" --grpc-port "$gp" \
            --concurrent-tasks 1 --work-dir "$WORK/exec-$n-$i" --trusted --key-file "$key" \
            2>"$WORK/executor-$n-$i.log" & pids+=($!)
        mkdir -p "$WORK/exec-$n-$i"
        wait_port "$fp"
    done
    sleep 2
    t=$(run_extract "$WORK/out-$n" --scheduler "127.0.0.1:$sp" --cluster-scratch "$WORK/scratch")
    same=yes
    for f in "$WORK"/out-embedded/*.parquet; do
        cmp -s "$f" "$WORK/out-$n/$(basename "$f")" || same=NO
    done
    echo "| cluster, $n trusted executor(s) | $t | $rows | $same |"
    cleanup; pids=()
    sleep 1
done
rm -rf "$WORK"/out-* "$WORK"/exec-* "$WORK/scratch"
