#!/usr/bin/env bash
# Extract memory benchmark (issue 5): peak RSS and wall time of `tre extract` (policies/bench.toml:
# clinical_events, NHS number pseudonymised) at several input sizes, to show that memory
# stays flat as the input grows.
#
#   benches/extract_memory.sh                     # 1M and 5M patients (~10M and ~50M event rows)
#   SIZES="100000 1000000" benches/extract_memory.sh
#   ORDERS="patient event" (default): row orders of the input (tre generate --order)
#
# Needs GNU time (`apt-get install -y time`). Builds `tre` in release mode unless TRE is set.
# Inputs are cached per size under $WORK (about 430 MB of CSV per million patients).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1000000 5000000"}
ORDERS=${ORDERS:-"patient event"}
WORK=${WORK:-target/extract-memory}
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install -y time" >&2; exit 2; }
if [ -z "${TRE:-}" ]; then
  cargo build --release --quiet --bin tre
  TRE=$PWD/target/release/tre
fi
TODAY=$(date -u +%F)
mkdir -p "$WORK"
[ -f "$WORK/key" ] || "$TRE" keygen --out "$WORK/key" -q
printf '| row order | patients | event rows read | input MB | wall s | rows/s | peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|\n' > "$WORK/table.md"
for ORDER in $ORDERS; do
for P in $SIZES; do
  IN="$WORK/in-$ORDER-$P"
  [ -f "$IN/clinical_events.csv" ] || "$TRE" generate --patients "$P" --seed 1 --no-faults --order "$ORDER" --out "$IN" -q
  OUT="$WORK/out-$P"
  rm -rf "$OUT" "$OUT.quarantine"
  cat "$IN/clinical_events.csv" > /dev/null
  /usr/bin/time -v "$TRE" --quiet extract --policy policies/bench.toml --input "$IN" \
    --opt-outs "$IN/opt_outs.txt" --opt-outs-as-of "$TODAY" --key-file "$WORK/key" --out "$OUT" \
    2> "$WORK/time-$P.txt"
  ROWS=$(python3 -c "import json;print(json.load(open('$OUT/manifest.json'))['tables']['clinical_events']['rows_read'])")
  MB=$(( $(stat -c %s "$IN/clinical_events.csv") / 1000000 ))
  WALL=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/time-$P.txt" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  RSS=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$WORK/time-$P.txt")
  RATE=$(python3 -c "print(f'{$ROWS/$WALL:,.0f}')")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$ORDER" "$P" "$ROWS" "$MB" "$WALL" "$RATE" "$RSS" >> "$WORK/table.md"
  rm -rf "$OUT" "$OUT.quarantine"
done
done
cat "$WORK/table.md"
