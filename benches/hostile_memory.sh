#!/usr/bin/env bash
# Hostile-record memory benchmark (issue 12, defect 5): peak RSS and wall time of `tre
# extract` (policies/bench.toml) when clinical_events.csv holds one enormous record, to
# show that memory stays flat whatever its length (the record is streamed past and
# quarantined cut to 64 KiB) and that time grows linearly with it.
#
#   benches/hostile_memory.sh                        # 10 MB, 100 MB and 1000 MB records
#   MB_SIZES="10 100" benches/hostile_memory.sh
#   KINDS="commas text" (default): a line of commas, or one long unquoted field
#
# Needs GNU time (`apt-get install -y time`). Builds `tre` in release mode unless TRE is set.
set -euo pipefail
cd "$(dirname "$0")/.."
MB_SIZES=${MB_SIZES:-"10 100 1000"}
KINDS=${KINDS:-"commas text"}
WORK=${WORK:-target/hostile-memory}
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install -y time" >&2; exit 2; }
if [ -z "${TRE:-}" ]; then
  cargo build --release --quiet --bin tre
  TRE=$PWD/target/release/tre
fi
TODAY=$(date -u +%F)
mkdir -p "$WORK"
[ -f "$WORK/key" ] || "$TRE" keygen --out "$WORK/key" -q
[ -f "$WORK/base/clinical_events.csv" ] || "$TRE" generate --patients 1000 --seed 1 --no-faults --out "$WORK/base" -q
printf '| record | MB | wall s | peak RSS MB | quarantine KB |\n|---|---:|---:|---:|---:|\n' > "$WORK/table.md"
for KIND in $KINDS; do
for MB in $MB_SIZES; do
  IN="$WORK/in-$KIND-$MB"
  rm -rf "$IN" && mkdir -p "$IN"
  cp "$WORK/base/opt_outs.txt" "$IN/"
  {
    head -n 2 "$WORK/base/clinical_events.csv"
    if [ "$KIND" = commas ]; then
      printf '9434765870,2020-01-01,38341003,,'
      head -c $(( MB * 1000000 )) /dev/zero | tr '\0' ','
    else
      printf '9434765870,2020-01-01,38341003,,'
      head -c $(( MB * 1000000 )) /dev/zero | tr '\0' 'x'
    fi
    printf '\n'
    tail -n +3 "$WORK/base/clinical_events.csv"
  } > "$IN/clinical_events.csv"
  OUT="$WORK/out-$KIND-$MB"
  rm -rf "$OUT" "$OUT.quarantine"
  /usr/bin/time -v "$TRE" --quiet extract --policy policies/bench.toml --input "$IN" \
    --opt-outs "$IN/opt_outs.txt" --opt-outs-as-of "$TODAY" --key-file "$WORK/key" --out "$OUT" \
    2> "$WORK/time-$KIND-$MB.txt"
  python3 -c "import json,sys; t=json.load(open('$OUT/manifest.json'))['tables']['clinical_events']; sys.exit(0 if t['rejected_by_reason'].get('record_too_long')==1 else 1)" \
    || { echo "$KIND $MB MB: the record was not quarantined as record_too_long" >&2; exit 1; }
  WALL=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/time-$KIND-$MB.txt" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  RSS=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$WORK/time-$KIND-$MB.txt")
  QKB=$(( $(stat -c %s "$OUT.quarantine/clinical_events.csv") / 1000 ))
  printf '| %s | %s | %s | %s | %s |\n' "$KIND" "$MB" "$WALL" "$RSS" "$QKB" >> "$WORK/table.md"
  rm -rf "$IN" "$OUT" "$OUT.quarantine"
done
done
cat "$WORK/table.md"
