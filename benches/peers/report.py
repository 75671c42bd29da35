#!/usr/bin/env python3
"""Summarise a compare.sh run: one markdown table (tool, wall s, rows/s, peak RSS MB,
output MB, time ratio to tre), the tre thread speed-up, and the agreement checks.

Usage: report.py RUNS.tsv   (columns: tool, time -v file, output .parquet, rows read,
comparable: 1 when the tool ran on the full input and must agree on the rows written)
       report.py --summary ORDER=RUNS.tsv ...   one row per row order: tre against DuckDB
       and polars (time ratio, output size, peak RSS)
Exit status 1 when the tools disagree on the number of surviving rows."""

import csv
import re
import sys

import pyarrow.parquet as pq


def wall_seconds(text):
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    parts = [float(x) for x in m.group(1).split(":")]
    s = 0.0
    for p in parts:
        s = s * 60 + p
    return s


def peak_rss_mb(text):
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024


def load(path):
    runs = []
    with open(path, newline="") as f:
        for tool, tfile, out, rows_read, comparable in csv.reader(f, delimiter="\t"):
            text = open(tfile).read()
            md = pq.ParquetFile(out).metadata
            runs.append(dict(tool=tool, wall=wall_seconds(text), rss=peak_rss_mb(text),
                             out_mb=__import__("os").path.getsize(out) / 1e6,
                             rows_read=int(rows_read), rows_written=md.num_rows,
                             comparable=comparable == "1"))
    return runs


def summary(pairs):
    print("| row order | tre s | DuckDB s | polars s | DuckDB / tre | polars / tre | "
          "tre MB | DuckDB MB | polars MB | tre peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pair in pairs:
        order, path = pair.split("=", 1)
        runs = load(path)
        tre = runs[0]
        duck = next(r for r in runs if r["tool"].startswith("duckdb"))
        pol = next(r for r in runs if r["tool"].startswith("polars"))
        print(f"| {order} | {tre['wall']:.2f} | {duck['wall']:.2f} | {pol['wall']:.2f} | "
              f"{duck['wall'] / tre['wall']:.2f}x | {pol['wall'] / tre['wall']:.2f}x | "
              f"{tre['out_mb']:.1f} | {duck['out_mb']:.1f} | {pol['out_mb']:.1f} | {tre['rss']:.0f} |")
    return 0


def main():
    if sys.argv[1] == "--summary":
        return summary(sys.argv[2:])
    runs = load(sys.argv[1])
    base = runs[0]["wall"]
    print("| tool | wall s | rows/s | peak RSS MB | output MB | rows written | time / tre |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['tool']} | {r['wall']:.2f} | {r['rows_read'] / r['wall']:,.0f} | "
              f"{r['rss']:.0f} | {r['out_mb']:.1f} | {r['rows_written']:,} | "
              f"{r['wall'] / base:.2f}x |")
    print()
    t1 = next((r for r in runs if r["tool"].endswith("--threads 1")), None)
    t2 = next((r for r in runs if r["tool"].endswith("--threads 2")), None)
    if t1 and t2:
        print(f"tre speed-up, --threads 2 vs --threads 1: {t1['wall'] / t2['wall']:.2f}x "
              f"({t1['wall']:.2f} s -> {t2['wall']:.2f} s)")
    counts = {r["tool"]: r["rows_written"] for r in runs if r["comparable"]}
    if len(set(counts.values())) != 1:
        print(f"DISAGREE: rows written differ between tools: {counts}")
        return 1
    print(f"agree: all {len(counts)} full-input runs wrote {next(iter(counts.values())):,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
