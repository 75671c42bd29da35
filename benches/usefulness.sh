#!/usr/bin/env bash
# Usefulness of the release gate (issue 22, "what it must show"): the realistic analyst
# tables of benches/tables.sql, each run alone through the TRE's job path (as the job's
# child runs it: rlimits, run_query, the differencing guard against an empty ledger) over
# generated demo data at 20,000 and 200,000 patients (policies/demo.toml, output rules
# `opensafely`). Prints per table and size: verdict (releasable, releasable with hidden
# cells, refused and why), cells, cells hidden and time; then the shares.
#
#   benches/usefulness.sh
#   SIZES="20000" benches/usefulness.sh
#
# Builds `tre` and the driver (`cargo build --release --bin tre-bench-query`) in release mode unless TRE and
# QUERY_BENCH are given.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
. benches/query_ws.sh
SIZES=${SIZES:-"20000 200000"}
WORK=${WORK:-$repo/target/query-bench}
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

build_tools
runs="$WORK/usefulness.jsonl"
: >"$runs"
for n in $SIZES; do
    make_ws "$n" "$WORK/p$n"
    say "$n patients: $(grep -c '^-- name:' benches/tables.sql) tables"
    env -i MALLOC_ARENA_MAX=2 "$QUERY_BENCH" --workspace "$WORK/p$n/ws" --tables benches/tables.sql |
        sed "s/^{/{\"patients\":$n,/" >>"$runs"
done

python3 - "$runs" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sizes = sorted({r["patients"] for r in runs})
names = list(dict.fromkeys(r["table"] for r in runs))
by = {(r["patients"], r["table"]): r for r in runs}
def verdict(r):
    if "error" in r:
        return "failed: " + r["error"][:60]
    v = r["verdict"]
    return {"releasable": "releasable", "releasable_with_hidden": "hidden cells",
            "empty": "empty"}.get(v, v.replace("refused_", "refused: ").replace("_", " "))
head = "| table | " + " | ".join(f"{n:,} patients: verdict | cells | hidden | s" for n in sizes) + " |"
print(head)
print("|---|" + "---|---:|---:|---:|" * len(sizes))
for t in names:
    cols = []
    for n in sizes:
        r = by.get((n, t))
        if r is None:
            cols.append("- | - | - | -")
        elif "error" in r:
            cols.append(f"{verdict(r)} | - | - | {r['seconds']:.2f}")
        else:
            cols.append(f"{verdict(r)} | {r['cells']} | {r['hidden']} | {r['seconds']:.2f}")
    print(f"| {t} | " + " | ".join(cols) + " |")
print()
for n in sizes:
    rs = [by[(n, t)] for t in names if (n, t) in by]
    k = lambda v: sum(1 for r in rs if r.get("verdict") == v)
    refused = [r for r in rs if "error" in r or r["verdict"].startswith("refused")]
    secs = sorted(r["seconds"] for r in rs)
    cells = sum(r.get("cells", 0) for r in rs if r.get("verdict", "").startswith("releasable"))
    hidden = sum(r.get("hidden", 0) for r in rs)
    print(f"- {n:,} patients, {len(rs)} tables: {k('releasable')} releasable as they are, "
          f"{k('releasable_with_hidden')} releasable with hidden cells, {len(refused)} refused "
          f"({', '.join(sorted({verdict(r) for r in refused})) or 'none'}); "
          f"{hidden} of the {cells} cells of releasable tables hidden; time per table median "
          f"{secs[len(secs) // 2]:.2f} s, longest {secs[-1]:.2f} s.")
PY
