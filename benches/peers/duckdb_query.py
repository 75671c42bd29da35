"""DuckDB's time for the query benchmark (benches/query.sh): the same tables over the same
Parquet file, in a fresh process per query, on the same number of threads as a TRE job.

Reads a file of named queries (each headed by `-- name: NAME`; `{events}` is replaced by
the Parquet path, `{out}` by --out), runs the one named NAME REPEAT times in one connection, and prints one
JSON line per run: seconds inside (query and fetch of the whole result), result rows, and
this process's peak RSS so far (Python and DuckDB included).
"""

import argparse
import json
import resource
import time

import duckdb


def read_queries(path):
    out, name = {}, None
    for line in open(path):
        if line.strip().startswith("-- name:"):
            name = line.split(":", 1)[1].strip()
            out[name] = ""
        elif name is not None:
            out[name] += line
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--events", required=True, help="the Parquet file")
    ap.add_argument("--out", default="/tmp/duckdb_query_out.parquet", help="{out}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    sql = read_queries(a.queries)[a.name].replace("{events}", a.events).replace("{out}", a.out)
    con = duckdb.connect()
    con.execute(f"SET threads = {a.threads}")
    for run in range(a.repeat):
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        seconds = time.perf_counter() - started
        print(json.dumps({"tool": "duckdb", "version": duckdb.__version__, "table": a.name,
                          "run": run, "seconds": round(seconds, 4), "rows": len(rows),
                          "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
              flush=True)


if __name__ == "__main__":
    main()
