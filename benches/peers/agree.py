#!/usr/bin/env python3
"""Check tre's pseudonyms against Python's hmac: a seeded sample of --sample output rows of
tre must each be HMAC-SHA256(key, NHS number) of an input NHS number, and tre's set of
distinct pseudonyms must equal the polars peer's (which uses Python's hmac).

Usage: agree.py --input clinical_events.csv --key-file KEY --tre OUT.parquet
                --polars OUT.parquet [--sample 1000]"""

import argparse
import hashlib
import hmac
import random
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--key-file", type=Path, required=True)
    ap.add_argument("--tre", type=Path, required=True)
    ap.add_argument("--polars", type=Path)
    ap.add_argument("--sample", type=int, default=1000)
    a = ap.parse_args()
    key = bytes.fromhex(a.key_file.read_text().strip())
    nhs = (pl.scan_csv(a.input, schema_overrides={"nhs_number": pl.Utf8}, infer_schema=False)
           .select(pl.col("nhs_number").str.replace_all(r"[ \-]", "")).unique().collect()
           .get_column("nhs_number").to_list())
    inverse = {hmac.new(key, n.encode("ascii"), hashlib.sha256).hexdigest(): n for n in nhs if n}
    tre = pq.read_table(a.tre, columns=["patient_pseudonym"]).column(0).to_pylist()
    rng = random.Random(1)
    sample = rng.sample(range(len(tre)), min(a.sample, len(tre)))
    bad = sum(1 for i in sample if tre[i] not in inverse)
    ok = True
    if bad:
        print(f"DISAGREE: {bad} of {len(sample)} sampled tre rows are not HMAC(key, input NHS number)")
        ok = False
    else:
        print(f"agree: {len(sample)} sampled tre pseudonyms equal Python hmac of an input NHS number")
    if a.polars:
        pol = set(pq.read_table(a.polars, columns=["patient_pseudonym"]).column(0).to_pylist())
        if pol != set(tre):
            print(f"DISAGREE: distinct pseudonyms: tre {len(set(tre))}, polars {len(pol)}, "
                  f"only in tre {len(set(tre) - pol)}, only in polars {len(pol - set(tre))}")
            ok = False
        else:
            print(f"agree: tre and polars (Python hmac) give the same {len(pol):,} distinct pseudonyms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
