#!/usr/bin/env python3
"""Peer: the bench extract in pandas on the first --rows rows only (pandas holds
everything in memory as Python objects); real HMAC via a dict over distinct numbers.
Type 1 status is computed within the slice, so its row count is not comparable."""

import hashlib
import hmac
import time

import pandas as pd

from common import done, parse_args, read_key


def main():
    a = parse_args(__doc__, lambda ap: ap.add_argument("--rows", type=int, default=1_000_000))
    started = time.time()
    key, _ = read_key(a.key_file)
    codes = pd.read_csv(a.codelist, dtype=str)
    kind = dict(zip(codes["code"].str.strip(), codes["kind"].str.strip()))
    opt = pd.read_csv(a.opt_outs, dtype=str)["nhs_number"].dropna()
    optouts = set(opt.str.replace(r"[ -]", "", regex=True))
    ev = pd.read_csv(a.input, nrows=a.rows, dtype={"nhs_number": str, "snomed_code": str, "unit": str,
                                                   "numeric_value": "float64"},
                     parse_dates=["event_date"], keep_default_na=False, na_values={"numeric_value": [""]})
    ev["nhs_number"] = ev["nhs_number"].str.replace(r"[ -]", "", regex=True)
    ev["unit"] = ev["unit"].replace("", None)
    t1 = ev[ev["snomed_code"].isin(kind.keys())][["nhs_number", "event_date", "snomed_code"]].copy()
    t1["is_dissent"] = t1["snomed_code"].map(kind) == "dissent"
    t1 = t1.sort_values(["nhs_number", "event_date", "is_dissent"]).groupby("nhs_number").tail(1)
    dissent = set(t1.loc[t1["is_dissent"], "nhs_number"])
    kept = ev[~ev["nhs_number"].isin(optouts | dissent)].copy()
    cache = {n: hmac.new(key, n.encode("ascii"), hashlib.sha256).hexdigest()
             for n in kept["nhs_number"].unique()}
    kept.insert(0, "patient_pseudonym", kept["nhs_number"].map(cache))
    kept["event_date"] = kept["event_date"].dt.date
    kept = kept.drop(columns=["nhs_number"])
    kept.to_parquet(a.out, compression="zstd", index=False)
    done(f"pandas ({a.rows} rows)", len(ev), len(kept), a.out, started, type1_dissenters=len(dissent))


if __name__ == "__main__":
    main()
