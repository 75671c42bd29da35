#!/usr/bin/env python3
"""Write a tiny, hand-made extract (inputs AND a correct `tre extract` output) to test
verify_extract.py without the Rust binary, optionally with one planted fault.

Usage: make_fixture.py ROOT [--plant none|optout|raw|raw-manifest|key|wrong-count]

Writes ROOT/in/{patients,registrations,clinical_events,medications,appointments}.csv,
ROOT/in/opt_outs.txt, ROOT/key (key bytes 00..1f, the docs/contracts.md test key), and
ROOT/out/{patients,clinical_events,medications}.parquet + manifest.json, with the
quarantine in ROOT/out.quarantine/. Every input row carries its fate, written here by
hand (not computed by the checker's logic): keep, ndoo, type1 or a rejection reason.

Plants: optout       = one row of a Type 1 dissenter kept in clinical_events (manifest
                       counts adjusted so only the opt-out check can catch it);
        raw          = a raw NHS number (spaced form) in a kept column value;
        raw-manifest = a raw NHS number (10 digits) in manifest.json's project name;
        key          = the key's hex in the Parquet key-value metadata;
        wrong-count  = manifest rows_written off by one for medications.
"""

import argparse
import csv
import datetime
import hashlib
import hmac
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

KEY = bytes(range(32))

# Synthetic NHS numbers (valid Modulus 11 unless noted).
A = "943 476 5919"  # spaced, test vector of docs/contracts.md
B = "9434765870"  # on the NDOO list
C = "4000000012"  # Type 1 dissent only
D = "4000000020"  # dissent, later withdrawn -> kept
E = "4000000039"  # withdrawal, later dissent -> removed
F = "4000000047"  # dissent + withdrawal on the same day -> removed (dissent wins)
G = "9434765918"  # INVALID check digit -> quarantined
I = "400-000-0055"  # hyphenated -> kept
J = "4000000063"  # malformed patients row (extra field); kept in other tables
K = "4000000071"  # on the NDOO list AND a Type 1 dissenter -> counted as ndoo

DISSENT, WITHDRAW = "827241000000103", "827261000000102"

# (fields..., fate)
PATIENTS = [
    ([A, "Ann Alpha", "1950-01-02", "F", "A", "LS1 1AA", "E01000001", ""], "keep"),
    ([B, "Bob Beta", "1960-03-04", "M", "B", "LS1 1AB", "E01000002", ""], "ndoo"),
    ([C, "Cat Gamma", "1970-05-06", "F", "C", "LS1 1AC", "E01000003", ""], "type1"),
    ([D, "Dan Delta", "1980-07-08", "M", "", "", "", ""], "keep"),
    ([E, "Eve Epsilon", "1990-09-10", "F", "A", "LS1 1AE", "E01000005", ""], "type1"),
    ([F, "Fay Zeta", "2000-11-12", "F", "A", "LS1 1AF", "E01000006", "2020-01-01"], "type1"),
    ([G, "Gus Eta", "1955-01-01", "M", "A", "LS1 1AG", "E01000007", ""], "reject:nhs_number_check_digit"),
    (["", "Hal Theta", "1956-01-01", "M", "A", "LS1 1AH", "E01000008", ""], "reject:nhs_number_missing"),
    ([I, "Ivy Iota", "1957-01-01", "F", "A", "LS1 1AI", "E01000009", ""], "keep"),
    ([J, "Jon Kappa", "1958-01-01", "M", "A", "LS1 1AJ", "E01000010", "", "EXTRA"], "reject:field_count"),
    ([K, "Kim Lambda", "1959-01-01", "U", "A", "LS1 1AK", "E01000011", ""], "ndoo"),
]
EVENTS = [
    ([A, "2021-01-01", "22K..", "72.5", "kg"], "keep"),
    ([A, "2021-13-01", "22K..", "72.5", "kg"], "reject:event_date_type"),
    ([B, "2021-02-02", "22K..", "80", "kg"], "ndoo"),
    ([C, "2019-01-01", DISSENT, "", ""], "type1"),
    ([C, "2020-01-01", "44P..", "5.1", "mmol/L"], "type1"),
    ([D, "2020-01-01", DISSENT, "", ""], "keep"),
    ([D, "2021-01-01", WITHDRAW, "", ""], "keep"),
    ([D, "2021-02-01", "44P..", "4.9", "mmol/L"], "keep"),
    ([E, "2020-01-01", WITHDRAW, "", ""], "type1"),
    ([E, "2021-06-01", "9Nu0.", "", ""], "type1"),
    ([F, "2020-01-01", WITHDRAW, "", ""], "type1"),
    ([F, "2020-01-01", "XaZ89", "", ""], "type1"),
    ([G, "2020-01-01", "44P..", "5.0", "mmol/L"], "reject:nhs_number_check_digit"),
    ([I, "2022-03-03", "44P..", "6.0", "mmol/L"], "keep"),
    ([J, "2022-04-04", "44P..", "6.1", "mmol/L"], "keep"),
    ([K, "2022-05-05", DISSENT, "", ""], "ndoo"),
    (["94347", "2022-05-05", "44P..", "", ""], "reject:nhs_number_format"),
]
MEDS = [
    ([A, "2021-01-05", "39732311000001104", "28"], "keep"),
    ([C, "2021-01-05", "39732311000001104", "28"], "type1"),
    ([D, "2021-01-05", "39732311000001104", ""], "keep"),
    ([J, "2021-01-05", "39732311000001104", "56"], "keep"),
    ([K, "2021-01-05", "39732311000001104", "56"], "ndoo"),
]
REGS = [[A, "B82001", "2000-01-01", ""], [G, "B82001", "2001-01-01", "2010-01-01"]]
APPTS = [[D, "B82001", "2021-01-01", "2021-01-08", "attended", "telephone"]]
OPT_OUTS = ["943 476 5870", "4000000071"]

HEADERS = {
    "patients": ["nhs_number", "name", "date_of_birth", "sex", "ethnicity_code", "postcode", "lsoa", "date_of_death"],
    "clinical_events": ["nhs_number", "event_date", "snomed_code", "numeric_value", "unit"],
    "medications": ["nhs_number", "issue_date", "dmd_code", "quantity"],
    "registrations": ["nhs_number", "practice_code", "start_date", "end_date"],
    "appointments": ["nhs_number", "practice_code", "booked_date", "appointment_date", "status", "mode"],
}
# Output columns per table: (input column, arrow type); nhs_number becomes the pseudonym.
OUTPUT = {
    "patients": [("date_of_birth", pa.date32()), ("sex", pa.string())],
    "clinical_events": [("event_date", pa.date32()), ("snomed_code", pa.string()),
                        ("numeric_value", pa.float64()), ("unit", pa.string())],
    "medications": [("issue_date", pa.date32()), ("dmd_code", pa.string()), ("quantity", pa.float64())],
}
ROWS = {"patients": PATIENTS, "clinical_events": EVENTS, "medications": MEDS}


def digits(s):
    return s.replace(" ", "").replace("-", "")


def ps(nhs):
    return hmac.new(KEY, digits(nhs).encode(), hashlib.sha256).hexdigest()


def sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def convert(v, t):
    if v == "":
        return None
    if t == pa.date32():
        return datetime.date.fromisoformat(v)
    if t == pa.float64():
        return float(v)
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--plant", default="none",
                    choices=["none", "optout", "raw", "raw-manifest", "key", "wrong-count"])
    a = ap.parse_args()
    inp, out = a.root / "in", a.root / "out"
    qdir = Path(str(out) + ".quarantine")
    for d in (inp, out, qdir):
        d.mkdir(parents=True, exist_ok=False)
    keyfile = a.root / "key"
    keyfile.write_text(KEY.hex() + "\n")
    os.chmod(keyfile, 0o600)

    def write_csv(name, rows):
        with open(inp / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADERS[name])
            w.writerows(rows)

    for name, rows in ROWS.items():
        write_csv(name, [r for r, _ in rows])
    write_csv("registrations", REGS)
    write_csv("appointments", APPTS)
    (inp / "opt_outs.txt").write_text("nhs_number\n" + "\n".join(OPT_OUTS) + "\n")

    tables = {}
    files = []
    for name, rows in ROWS.items():
        header = HEADERS[name]
        kept = [r for r, fate in rows if fate == "keep"]
        if a.plant == "optout" and name == "clinical_events":
            kept.append([C, "2020-01-01", "44P..", "5.1", "mmol/L"])  # C dissented
        cols = {"patient_pseudonym": pa.array([ps(r[0]) for r in kept], pa.string())}
        for col, t in OUTPUT[name]:
            i = header.index(col)
            vals = [convert(r[i], t) for r in kept]
            if a.plant == "raw" and name == "clinical_events" and col == "unit":
                vals[0] = A  # "943 476 5919"
            cols[col] = pa.array(vals, t)
        table = pa.table(cols)
        if a.plant == "key" and name == "medications":
            table = table.replace_schema_metadata({"note": KEY.hex()})
        op = out / f"{name}.parquet"
        pq.write_table(table, op, compression="zstd")
        # Quarantine: physical line number (header = line 1), reason, raw row.
        qrows = [(n + 2, fate.split(":", 1)[1], ",".join(r))
                 for n, (r, fate) in enumerate(rows) if fate.startswith("reject:")]
        with open(qdir / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["line", "reason", "record"])
            w.writerows(qrows)
        os.chmod(qdir / f"{name}.csv", 0o600)
        reasons = {}
        for _, reason, _ in qrows:
            reasons[reason] = reasons.get(reason, 0) + 1
        count = lambda f: sum(1 for _, fate in rows if fate == f)  # noqa: E731
        removed_t1 = count("type1") - (1 if a.plant == "optout" and name == "clinical_events" else 0)
        written = table.num_rows + (1 if a.plant == "wrong-count" and name == "medications" else 0)
        size = op.stat().st_size
        tables[name] = {
            "inputs": [{"path": str(inp / f"{name}.csv"), "sha256": sha(inp / f"{name}.csv"),
                        "bytes": (inp / f"{name}.csv").stat().st_size}],
            "rows_read": len(rows),
            "rows_rejected": len(qrows),
            "rejected_by_reason": reasons,
            "rows_removed_ndoo": count("ndoo"),
            "rows_removed_type1": removed_t1,
            "rows_filtered": 0,
            "rows_written": written,
            "output": {"path": op.name, "sha256": sha(op), "bytes": size},
        }
        if a.plant == "wrong-count" and name == "medications":
            tables[name]["rows_filtered"] = -1  # keep the equation true; only the readers disagree
        files.append({"path": op.name, "size": size, "sha256": sha(op)})
    manifest = {
        "tool_version": "fixture",
        "project": "demo-9434765870" if a.plant == "raw-manifest" else "demo",
        "policy_sha256": "0" * 64,
        "key_fingerprint": hmac.new(KEY, b"tre-key-fingerprint", hashlib.sha256).hexdigest()[:16],
        "opt_outs": {"as_of": "2025-01-01", "sha256": sha(inp / "opt_outs.txt"),
                     "entries": len(OPT_OUTS), "exemption": None},
        "type1": {"dissenters": 4, "exemption": None},  # C, E, F, K
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:01Z",
        "tables": tables,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
