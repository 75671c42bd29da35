#!/usr/bin/env bash
# Query-job memory benchmark (issue 4): peak RSS of `tre query` over the generated
# clinical_events table at two sizes, to show that memory does not grow with the table.
#
#   benches/query_memory.sh                 # 100k and 1.1M patients (~1M and ~10M event rows written)
#   SIZES="10000 100000" benches/query_memory.sh
#
# Needs GNU time (`apt-get install -y time`). Builds `tre` in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"100000 1100000"}
WORK=${WORK:-target/query-memory}
command -v /usr/bin/time >/dev/null || { echo "GNU time is needed: apt-get install -y time" >&2; exit 2; }
cargo build --release --quiet
TRE=$PWD/target/release/tre
TODAY=$(date -u +%F)
mkdir -p "$WORK"
printf '| patients | event rows | query wall s | peak RSS MB |\n|---:|---:|---:|---:|\n' > "$WORK/table.md"
for P in $SIZES; do
  D="$WORK/p$P"
  rm -rf "$D"; mkdir -p "$D"
  "$TRE" generate --patients "$P" --seed 1 --out "$D/in" -q
  "$TRE" keygen --out "$D/key" -q
  "$TRE" init "$D/ws" --policy policies/demo.toml -q
  "$TRE" extract --policy "$D/ws/projects/demo/policy.toml" --input "$D/in" --opt-outs "$D/in/opt_outs.txt" \
    --opt-outs-as-of "$TODAY" --key-file "$D/key" --out "$D/ws/projects/demo/data" -q
  ROWS=$(python3 -c "import json;print(json.load(open('$D/ws/projects/demo/data/manifest.json'))['tables']['clinical_events']['rows_written'])")
  cat > "$D/q.sql" <<'SQL'
SELECT snomed_code, date_part('year', event_date) AS year, COUNT(*) AS n
FROM clinical_events GROUP BY snomed_code, date_part('year', event_date)
SQL
  TRE_USER=analyst /usr/bin/time -v "$TRE" query --workspace "$D/ws" --project demo --sql "$D/q.sql" \
    --purpose "memory benchmark" --job bench -q 2> "$D/time.txt"
  WALL=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$D/time.txt" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  RSS=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$D/time.txt")
  printf '| %s | %s | %s | %s |\n' "$P" "$ROWS" "$WALL" "$RSS" >> "$WORK/table.md"
done
cat "$WORK/table.md"
