"""Side-by-side: ACRO's crosstab checks versus `tre check --rules acro-default`.

For a set of generated microdata sets, ACRO (the `acro` package, run with its default
parameters: threshold 10, p-ratio 0.1, nk-rule n=2 k=0.9, zeros disclosive) tabulates a
2-D crosstab of sums and marks each cell's failed checks in its outcome table. The same
microdata, aggregated to an aggregate table with a count, the sum, and each cell's two
largest contributions (`v_sum_top1`, `v_sum_top2`), goes through `tre check --json`.

Claim checked: every cell ACRO flags under threshold, p-ratio or nk-rule is flagged by
`tre check` under the same rule (threshold may appear as `zero` for empty cells). Cells
that only `tre check` flags are counted by rule: `secondary` is where we are stricter
(ACRO leaves secondary suppression to the output checker).

Usage: python side_by_side.py TRE_BINARY WORKDIR [N_TABLES]
Prints one JSON summary line last; exits 0 if the claim holds, 1 if not.
"""

import json
import logging
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd

logging.disable(logging.CRITICAL)

from acro import ACRO  # noqa: E402  (after silencing its logging)


def microdata(rng: random.Random, n_rows: int, n_cols: int) -> pd.DataFrame:
    rows = []
    for i in range(n_rows):
        for j in range(n_cols):
            kind = rng.random()
            if kind < 0.08:
                size = 0
            elif kind < 0.35:
                size = rng.randint(1, 12)
            else:
                size = rng.randint(10, 60)
            dominant = rng.random() < 0.2
            for k in range(size):
                v = round(rng.lognormvariate(3, 1), 2)
                if dominant and k == 0:
                    v = round(v * rng.uniform(20, 200), 2)
                rows.append((f"a{i}", f"b{j}", v))
    return pd.DataFrame(rows, columns=["a", "b", "v"])


def aggregate(df: pd.DataFrame, n_rows: int, n_cols: int) -> pd.DataFrame:
    out = []
    for i in range(n_rows):
        for j in range(n_cols):
            vals = sorted(
                df[(df.a == f"a{i}") & (df.b == f"b{j}")].v.tolist(), reverse=True
            )
            top = vals[:2] + [0.0] * (2 - len(vals[:2]))
            out.append(
                {
                    "a": f"a{i}",
                    "b": f"b{j}",
                    "n": len(vals),
                    "v_sum": float(np.sum(vals)) if vals else 0.0,
                    "v_sum_top1": top[0],
                    "v_sum_top2": top[1],
                }
            )
    return pd.DataFrame(out)


# ACRO's outcome names: older releases use the rule names, newer ones check class names.
ACRO_NAMES = {
    "threshold": "threshold",
    "MinimumThresholdCheck": "threshold",
    "p-ratio": "p-ratio",
    "PPercentCheck": "p-ratio",
    "nk-rule": "nk-rule",
    "NKCheck": "nk-rule",
}


def acro_flags(df: pd.DataFrame) -> set:
    acro = ACRO(suppress=False)
    acro.crosstab(df.a, df.b, values=df.v, aggfunc="sum")
    records = acro.results.results
    record = records[list(records.keys())[-1]]
    outcome = record.outcome
    flags = set()
    for a in outcome.index:
        for b in outcome.columns:
            for name in str(outcome.loc[a, b]).split(";"):
                rule = ACRO_NAMES.get(name.strip())
                if rule:
                    flags.add((str(a), str(b), rule))
    return flags


def tre_flags(tre: str, path: str) -> tuple[set, Counter]:
    res = subprocess.run(
        [tre, "check", path, "--rules", "acro-default", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode not in (0, 1):
        raise SystemExit(f"tre check failed ({res.returncode}): {res.stderr}")
    report = json.loads(res.stdout)
    flags = set()
    by_rule = Counter()
    for f in report["findings"]:
        rule = "threshold" if f["rule"] == "zero" else f["rule"]
        a, b = f["key"][0], f["key"][1]
        flags.add((a, b, rule))
        by_rule[rule] += 1
    return flags, by_rule


def main() -> int:
    tre, workdir = sys.argv[1], sys.argv[2]
    n_tables = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    rng = random.Random(20240601)
    os.makedirs(workdir, exist_ok=True)
    total_acro = Counter()
    total_ours = Counter()
    missing = []
    stricter = Counter()
    for t in range(n_tables):
        n_rows, n_cols = rng.randint(2, 5), rng.randint(2, 5)
        df = microdata(rng, n_rows, n_cols)
        table = aggregate(df, n_rows, n_cols)
        # ACRO drops rows and columns that are empty throughout; so do we, to compare like
        # with like.
        keep_a = table.groupby("a").n.sum()
        keep_b = table.groupby("b").n.sum()
        table = table[
            table.a.map(keep_a).gt(0) & table.b.map(keep_b).gt(0)
        ].reset_index(drop=True)
        path = os.path.join(workdir, f"table_{t}.csv")
        table.to_csv(path, index=False, float_format="%.17g")
        acro = acro_flags(df)
        ours, by_rule = tre_flags(tre, path)
        total_acro.update(r for (_, _, r) in acro)
        total_ours.update(by_rule)
        for flag in sorted(acro):
            if flag not in ours:
                missing.append({"table": t, "cell": flag[:2], "rule": flag[2]})
        for a, b, r in ours:
            if (a, b, r) not in acro:
                stricter[r] += 1
    try:
        from importlib.metadata import version

        acro_version = version("acro")
    except Exception:  # noqa: BLE001
        acro_version = "unknown"
    summary = {
        "acro_version": acro_version,
        "tables": n_tables,
        "acro_flags": dict(total_acro),
        "tre_findings": dict(total_ours),
        "missing": missing,
        "tre_only_by_rule": dict(stricter),
    }
    print(json.dumps(summary))
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
