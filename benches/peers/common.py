"""Shared command line and helpers for the peer implementations of the bench extract.

Each peer does the job of `tre extract --policy policies/bench.toml` on clinical_events:
read the CSV, normalise NHS numbers (strip spaces and hyphens), drop patients on the
National Data Opt-out list and Type 1 dissenters (latest Type 1 code is a dissent; same-day
tie: dissent wins), replace nhs_number by a pseudonym, keep the other columns, and write
zstd Parquet. Inputs are fault-free (`tre generate --no-faults`), so the peers skip the
Modulus 11 check and the quarantine that tre does.
"""

import argparse
import json
import sys
import time
from pathlib import Path

COLUMNS = ["nhs_number", "event_date", "snomed_code", "numeric_value", "unit"]


def parse_args(description, extra=None):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--input", type=Path, required=True, help="clinical_events.csv")
    ap.add_argument("--opt-outs", type=Path, required=True)
    ap.add_argument("--codelist", type=Path, required=True)
    ap.add_argument("--key-file", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="output .parquet")
    if extra:
        extra(ap)
    return ap.parse_args()


def read_key(path):
    text = path.read_text().strip()
    if len(text) != 64:
        sys.exit(f"{path}: expected 64 hex characters")
    return bytes.fromhex(text), text.lower()


def done(tool, rows_read, rows_written, out, started, **extra):
    """Print one JSON line that compare.sh collects."""
    rec = {"tool": tool, "rows_read": rows_read, "rows_written": rows_written,
           "out_bytes": out.stat().st_size, "seconds_inside": round(time.time() - started, 3)}
    rec.update(extra)
    print(json.dumps(rec), flush=True)
