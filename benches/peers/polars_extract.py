#!/usr/bin/env python3
"""Peer: the bench extract in polars, with the real pseudonym (HMAC-SHA256 from Python's
hmac). --hmac cache (default) hashes each distinct NHS number once and joins the mapping
back; --hmac map_elements calls the Python function per row (much slower)."""

import hashlib
import hmac
import time

import polars as pl

from common import done, parse_args, read_key

SCHEMA = {"nhs_number": pl.Utf8, "event_date": pl.Date, "snomed_code": pl.Utf8,
          "numeric_value": pl.Float64, "unit": pl.Utf8}


def main():
    a = parse_args(__doc__, lambda ap: ap.add_argument(
        "--hmac", choices=["cache", "map_elements"], default="cache"))
    started = time.time()
    key, _ = read_key(a.key_file)
    norm = pl.col("nhs_number").str.replace_all(r"[ \-]", "")

    codes = pl.read_csv(a.codelist, infer_schema=False).select(
        pl.col("code").str.strip_chars(), pl.col("kind").str.strip_chars())
    optouts = (pl.read_csv(a.opt_outs, schema={"nhs_number": pl.Utf8})
               .select(norm).drop_nulls().unique())
    ev = pl.read_csv(a.input, schema=SCHEMA).with_columns(norm)
    rows_read = ev.height
    type1 = (ev.select("nhs_number", "event_date", "snomed_code")
             .join(codes, left_on="snomed_code", right_on="code")
             .with_columns(is_dissent=pl.col("kind") == "dissent")
             .group_by("nhs_number")
             .agg(pl.col("is_dissent").sort_by(["event_date", "is_dissent"]).last())
             .filter("is_dissent").select("nhs_number"))
    kept = ev.join(optouts, on="nhs_number", how="anti").join(type1, on="nhs_number", how="anti")

    def ps(n):
        return hmac.new(key, n.encode("ascii"), hashlib.sha256).hexdigest()

    if a.hmac == "cache":
        uniq = kept.get_column("nhs_number").unique()
        mapping = pl.DataFrame({"nhs_number": uniq,
                                "patient_pseudonym": [ps(n) for n in uniq.to_list()]})
        out = kept.join(mapping, on="nhs_number", how="left", maintain_order="left")
    else:
        out = kept.with_columns(patient_pseudonym=pl.col("nhs_number").map_elements(
            ps, return_dtype=pl.Utf8))
    out = out.select("patient_pseudonym", "event_date", "snomed_code", "numeric_value", "unit")
    out.write_parquet(a.out, compression="zstd")
    done(f"polars ({a.hmac})", rows_read, out.height, a.out, started,
         type1_dissenters=type1.height)


if __name__ == "__main__":
    main()
