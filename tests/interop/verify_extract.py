#!/usr/bin/env python3
"""Independent checker for the output of `tre extract`.

Usage:
    verify_extract.py INPUT_DIR OUT_DIR KEY_FILE [--quarantine QDIR] [--opt-outs FILE]
                      [--policy FILE] [--codelist FILE] [--allow-exemptions]

It re-derives, from the raw inputs and with its own code (Python's csv, hmac and a
Modulus 11 check written here, not the Rust one), what a correct extract must contain,
and compares that with OUT_DIR:

  (a) every OUT/*.parquet is zstd-compressed and reads with pyarrow, pandas, polars and
      DuckDB, each giving the row count the manifest gives as rows_written;
  (b) the manifest's equation holds for every table
      (rows_read = rows_rejected + rows_removed_ndoo + rows_removed_type1 + rows_filtered
      + rows_written), its counts agree with an independent recount, and every `files`
      entry (and each table's `output`) matches the bytes on disk; no unlisted files;
  (c) the opted-out NHS numbers (National Data Opt-out list + patients whose latest Type 1
      code is a dissent, same-day tie: dissent wins), HMACed with Python's hmac, appear in
      no output's patient_pseudonym;
  (d) every output pseudonym is the HMAC of a valid, non-opted-out input NHS number of
      that table, and each table's multiset of pseudonyms equals the one expected from
      its accepted input rows (for patients: exactly {valid, not opted out} minus the
      quarantined lines);
  (e) no raw NHS number of any input row (10 digits, or spaced / hyphenated) appears
      anywhere in the bytes of OUT_DIR, nor in the decoded Parquet values;
  (f) the key (hex, either case, or its raw bytes) appears in no file of OUT_DIR.

Exit status 0 when every check passes, 1 when any fails (all failures are listed), 2 on
bad usage. Output never contains an NHS number or the key; pseudonyms are shown truncated.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import hashlib
import hmac
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLES_ALL = ("patients", "registrations", "clinical_events", "medications", "appointments")
NHS_COL = "nhs_number"
PSEUDO_COL = "patient_pseudonym"
MANIFEST_KEYS = (
    "tool_version", "project", "policy_sha256", "key_fingerprint", "opt_outs",
    "started_at", "finished_at", "tables", "files",
)
TABLE_KEYS = (
    "inputs", "rows_read", "rows_rejected", "rejected_by_reason", "rows_removed_ndoo",
    "rows_removed_type1", "rows_filtered", "rows_written", "output",
)
# Reasons (ours) that a correct extract must never accept: opt-out status is unknowable.
MUST_REJECT = {"nhs_number_missing", "nhs_number_format", "nhs_number_check_digit",
               "field_count"}


# ----------------------------------------------------------------------------- report
class Report:
    """Collects passes, warnings and failures; failures make the exit status 1."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.warnings: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL  {what}", flush=True)
        return ok

    def warn(self, what: str) -> None:
        self.warnings.append(what)
        print(f"WARN  {what}", flush=True)

    @staticmethod
    def info(what: str) -> None:
        print(f"      {what}", flush=True)


class Fatal(Exception):
    """A failure after which nothing else can be checked."""


def short(p: str) -> str:
    return (p[:12] + "...") if isinstance(p, str) else repr(p)


# ------------------------------------------------------------------------ NHS numbers
_SEPARATORS = re.compile(r"[ \t-]")


def classify_nhs(raw: str | None) -> tuple[str | None, str | None]:
    """(normalised 10 digits, None) for a valid number, else (None, reason)."""
    if raw is None or raw.strip() == "":
        return None, "nhs_number_missing"
    digits = _SEPARATORS.sub("", raw)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return None, "nhs_number_format"
    if not modulus11_ok(digits):
        return None, "nhs_number_check_digit"
    return digits, None


def modulus11_ok(digits: str) -> bool:
    """NHS Modulus 11: weights 10..2 over the first nine digits; 11 -> 0; 10 -> invalid."""
    total = sum(int(c) * w for c, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def pseudonym(key: bytes, nhs10: str) -> str:
    return hmac.new(key, nhs10.encode("ascii"), hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- inputs
@dataclass
class Row:
    phys_line: int  # first physical line of the record (header = line 1)
    index: int  # 1-based data record number
    fields: dict[str, str | None]
    nhs: str | None  # normalised, valid; None otherwise
    reasons: list[str]  # our own reasons to reject, empty when well-formed


@dataclass
class Table:
    name: str
    path: Path
    rows: list[Row]
    quarantined: set[int] = field(default_factory=set)  # indexes into rows

    def accepted(self):
        return (r for i, r in enumerate(self.rows) if i not in self.quarantined)


def load_schema(name: str) -> dict:
    p = REPO / "schemas" / f"{name}.toml"
    with open(p, "rb") as f:
        return tomllib.load(f)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I)
_INT = re.compile(r"[+-]?\d+")


def parse_date(s: str) -> datetime.date | None:
    if not _DATE.fullmatch(s):
        return None
    try:
        return datetime.date.fromisoformat(s)
    except ValueError:
        return None


def value_problem(col: dict, v: str | None) -> str | None:
    """Our own typing of one CSV field against its schema column; None when fine."""
    if v is None or v == "":
        return None if col.get("nullable", True) else f"{col['name']}_missing"
    if any("\udc80" <= ch <= "\udcff" for ch in v):
        return "encoding"
    t = col.get("type", "string")
    if t == "date" and parse_date(v) is None:
        return f"{col['name']}_type"
    if t in ("float64", "float32") and not _FLOAT.fullmatch(v):
        return f"{col['name']}_type"
    if t in ("int64", "int32") and not _INT.fullmatch(v):
        return f"{col['name']}_type"
    allowed = col.get("allowed")
    if allowed is not None and v not in allowed:
        return f"{col['name']}_allowed"
    return None


def load_table(input_dir: Path, name: str) -> Table | None:
    csv_path = input_dir / f"{name}.csv"
    pq_path = input_dir / f"{name}.parquet"
    schema = load_schema(name)
    cols = schema["columns"]
    rows: list[Row] = []
    if csv_path.exists():
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                return Table(name, csv_path, [])
            missing = [c["name"] for c in cols if c["name"] not in header]
            if missing:
                raise Fatal(f"{csv_path}: header lacks schema columns {missing}")
            pos = {h: i for i, h in enumerate(header)}
            prev_end = reader.line_num
            for rec in reader:
                start = prev_end + 1
                prev_end = reader.line_num
                if not rec:  # blank line: not a record (as the Rust csv crate reads it)
                    continue
                reasons = []
                if len(rec) != len(header):
                    reasons.append("field_count")
                fields = {c["name"]: (rec[pos[c["name"]]] if pos[c["name"]] < len(rec) else None)
                          for c in cols}
                nhs, why = classify_nhs(fields.get(NHS_COL))
                if why:
                    reasons.append(why)
                if "field_count" not in reasons:
                    for c in cols:
                        if c["name"] == NHS_COL:
                            continue
                        p = value_problem(c, fields[c["name"]])
                        if p:
                            reasons.append(p)
                rows.append(Row(start, len(rows) + 1, fields, nhs, reasons))
        return Table(name, csv_path, rows)
    if pq_path.exists():
        import pyarrow.parquet as pq

        t = pq.read_table(pq_path)
        data = t.to_pylist()
        for i, rec in enumerate(data):
            fields = {k: (None if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v)))
                      for k, v in rec.items()}
            nhs, why = classify_nhs(fields.get(NHS_COL))
            rows.append(Row(i + 1, i + 1, fields, nhs, [why] if why else []))
        return Table(name, pq_path, rows)
    return None


def load_opt_outs(path: Path, rep: Report) -> tuple[set[str], int, int]:
    """(valid normalised numbers, entry lines, invalid entries)."""
    numbers: set[str] = set()
    lines = invalid = 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for i, line in enumerate(f):
            s = line.strip().strip('"')
            if s == "":
                continue
            if i == 0 and re.search(r"[A-Za-z]", s):  # header line, e.g. "nhs_number"
                continue
            s = s.split(",")[0]
            lines += 1
            nhs, why = classify_nhs(s)
            if nhs:
                numbers.add(nhs)
            else:
                invalid += 1
    if invalid:
        rep.warn(f"opt-out list: {invalid} entries are not valid NHS numbers (ignored)")
    return numbers, lines, invalid


def load_codelist(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        out = {}
        for r in csv.DictReader(f):
            kind = r["kind"].strip()
            if kind not in ("dissent", "withdrawal"):
                raise Fatal(f"{path}: kind must be dissent|withdrawal, found {kind!r}")
            out[r["code"].strip()] = kind
        return out


def type1_status(rows, codes: dict[str, str]) -> dict[str, tuple[datetime.date, bool]]:
    """Per NHS number: the max of (date, is_dissent) over its Type 1 rows."""
    latest: dict[str, tuple[datetime.date, bool]] = {}
    for r in rows:
        kind = codes.get((r.fields.get("snomed_code") or "").strip())
        if kind is None or r.nhs is None:
            continue
        d = parse_date(r.fields.get("event_date") or "")
        if d is None:
            continue
        k = (d, kind == "dissent")
        if r.nhs not in latest or k > latest[r.nhs]:
            latest[r.nhs] = k
    return latest


def dissenters(latest) -> set[str]:
    return {n for n, (_, is_dissent) in latest.items() if is_dissent}


# ------------------------------------------------------------------------- quarantine
def load_quarantine(qfile: Path) -> tuple[list[int], collections.Counter]:
    with open(qfile, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        line_col = next((i for i, h in enumerate(header) if "line" in h), None)
        reason_col = next((i for i, h in enumerate(header) if "reason" in h), None)
        if line_col is None or reason_col is None:
            raise Fatal(f"{qfile}: expected a header with a line-number column (name "
                        f"containing 'line') and a 'reason' column; found {header}")
        lines, reasons = [], collections.Counter()
        for rec in reader:
            if not rec:
                continue
            try:
                lines.append(int(rec[line_col]))
            except (ValueError, IndexError):
                raise Fatal(f"{qfile}: line {reader.line_num}: line number is not an integer")
            reasons[rec[reason_col] if reason_col < len(rec) else ""] += 1
        return lines, reasons


LINE_CONVENTIONS = {
    "physical line (header = 1)": lambda r: r.phys_line,
    "data record, 1-based": lambda r: r.index,
    "data record, 0-based": lambda r: r.index - 1,
}


def map_quarantine(table: Table, qlines: list[int], rep: Report) -> None:
    """Find which line-number convention the quarantine uses and mark those rows."""
    must = {i for i, r in enumerate(table.rows) if MUST_REJECT & set(r.reasons)}
    tried = []
    for conv, key in LINE_CONVENTIONS.items():
        index = {key(r): i for i, r in enumerate(table.rows)}
        if not all(q in index for q in qlines):
            tried.append(f"{conv}: some line numbers match no input record")
            continue
        q = {index[x] for x in qlines}
        if must - q:
            tried.append(f"{conv}: {len(must - q)} rows that must be rejected are not quarantined")
            continue
        table.quarantined = q
        rep.info(f"{table.name}: quarantine line numbers read as '{conv}'")
        return
    # No convention explains it. Prefer the physical-line reading for what follows.
    index = {r.phys_line: i for i, r in enumerate(table.rows)}
    table.quarantined = {index[x] for x in qlines if x in index}
    rep.check(False, f"{table.name}: quarantine does not match the input under any line "
                     f"convention ({'; '.join(tried)}); rows with an invalid/missing NHS "
                     f"number or the wrong field count must all be quarantined")


# ---------------------------------------------------------------------------- outputs
def sha256_file(p: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def read_with_all_readers(p: Path, want_rows: int, rep: Report, name: str) -> list[str] | None:
    """(a): pyarrow, pandas, polars, duckdb; returns the pseudonym column (pyarrow)."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    pseudos = None
    try:
        pf = pq.ParquetFile(p)
        t = pf.read()
        rep.check(t.num_rows == want_rows,
                  f"{name}: pyarrow reads {t.num_rows} rows, manifest rows_written = {want_rows}")
        codecs = {pf.metadata.row_group(g).column(c).compression
                  for g in range(pf.metadata.num_row_groups)
                  for c in range(pf.metadata.num_columns)}
        rep.check(codecs <= {"ZSTD"} or want_rows == 0,
                  f"{name}: Parquet column chunks are zstd-compressed (found {sorted(codecs)})")
        rep.check(NHS_COL not in t.column_names,
                  f"{name}: output has no '{NHS_COL}' column")
        if rep.check(PSEUDO_COL in t.column_names,
                     f"{name}: output has a '{PSEUDO_COL}' column (columns: {t.column_names})"):
            pseudos = t.column(PSEUDO_COL).to_pylist()
    except Exception as e:  # noqa: BLE001 - any reader error is a failure to report
        rep.check(False, f"{name}: pyarrow cannot read {p.name}: {type(e).__name__}: {e}")
    try:
        n = len(pd.read_parquet(p))
        rep.check(n == want_rows, f"{name}: pandas reads {n} rows, want {want_rows}")
    except Exception as e:  # noqa: BLE001
        rep.check(False, f"{name}: pandas cannot read {p.name}: {type(e).__name__}: {e}")
    try:
        n = pl.read_parquet(p).height
        rep.check(n == want_rows, f"{name}: polars reads {n} rows, want {want_rows}")
    except Exception as e:  # noqa: BLE001
        rep.check(False, f"{name}: polars cannot read {p.name}: {type(e).__name__}: {e}")
    try:
        con = duckdb.connect()
        n = con.execute("SELECT count(*) FROM read_parquet(?)", [str(p)]).fetchone()[0]
        con.close()
        rep.check(n == want_rows, f"{name}: DuckDB reads {n} rows, want {want_rows}")
    except Exception as e:  # noqa: BLE001
        rep.check(False, f"{name}: DuckDB cannot read {p.name}: {type(e).__name__}: {e}")
    return pseudos


_NHS_LIKE = re.compile(rb"(?=(\d{3}[ -]?\d{3}[ -]?\d{4}))")


def find_raw_numbers(data: bytes, raw: set[bytes]) -> int:
    """Count occurrences of any raw NHS number, as 10 digits or with spaces/hyphens."""
    hits = 0
    for m in _NHS_LIKE.finditer(data):
        s = m.group(1).replace(b" ", b"").replace(b"-", b"")
        if len(s) == 10 and s in raw:
            hits += 1
    return hits


# ------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("key_file", type=Path)
    ap.add_argument("--quarantine", type=Path, help="default: OUT_DIR with '.quarantine' appended")
    ap.add_argument("--opt-outs", type=Path, help="default: INPUT_DIR/opt_outs.txt")
    ap.add_argument("--policy", type=Path, help="if given, check manifest policy_sha256")
    ap.add_argument("--codelist", type=Path,
                    default=REPO / "policies" / "codelists" / "type1-opt-out.csv")
    ap.add_argument("--allow-exemptions", action="store_true",
                    help="accept a manifest that declares an opt-out exemption")
    a = ap.parse_args(argv)
    rep = Report()
    try:
        run(a, rep)
    except Fatal as e:
        rep.check(False, str(e))
    print()
    if rep.failures:
        print(f"verify_extract: FAILED: {len(rep.failures)} check(s) failed, "
              f"{rep.passed} passed, {len(rep.warnings)} warning(s):")
        for f in rep.failures:
            print(f"  - {f}")
        return 1
    print(f"verify_extract: OK: {rep.passed} checks passed, {len(rep.warnings)} warning(s)")
    return 0


def run(a, rep: Report) -> None:
    out = a.out_dir.resolve()
    qdir = a.quarantine or Path(str(out) + ".quarantine")
    opt_path = a.opt_outs or a.input_dir / "opt_outs.txt"

    # Key.
    key_text = a.key_file.read_bytes().decode("ascii", "replace")
    key_hex = key_text[:-1] if key_text.endswith("\n") else key_text
    if not re.fullmatch(r"[0-9a-fA-F]{64}", key_hex):
        raise Fatal(f"{a.key_file}: not 64 hex characters and an optional newline")
    key = bytes.fromhex(key_hex)
    cache: dict[str, str] = {}

    def ps(n: str) -> str:
        v = cache.get(n)
        if v is None:
            v = cache[n] = pseudonym(key, n)
        return v

    # Manifest.
    mpath = out / "manifest.json"
    if not mpath.exists():
        raise Fatal(f"{mpath} does not exist")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise Fatal(f"{mpath} is not valid JSON: {e}")
    for k in MANIFEST_KEYS:
        rep.check(k in manifest, f"manifest has key '{k}'")
    tables_m = manifest.get("tables") or {}
    if not tables_m:
        raise Fatal("manifest names no tables")
    fp = hmac.new(key, b"tre-key-fingerprint", hashlib.sha256).hexdigest()[:16]
    rep.check(manifest.get("key_fingerprint") == fp,
              f"manifest key_fingerprint {manifest.get('key_fingerprint')!r} is the "
              f"fingerprint of KEY_FILE")
    if a.policy:
        rep.check(manifest.get("policy_sha256") == sha256_file(a.policy)[0],
                  "manifest policy_sha256 matches --policy")
    oo = manifest.get("opt_outs") or {}
    if opt_path.exists():
        rep.check(oo.get("sha256") == sha256_file(opt_path)[0],
                  f"manifest opt_outs.sha256 matches {opt_path.name}")
    t1m = manifest.get("type1") or {}
    ndoo_exempt = bool(oo.get("exemption"))
    t1_exempt = bool(t1m.get("exemption"))
    for label, exempt in (("opt_outs", ndoo_exempt), ("type1", t1_exempt)):
        if exempt:
            rep.check(a.allow_exemptions,
                      f"manifest declares a {label} exemption; pass --allow-exemptions if intended")

    # (b) files list: sizes and hashes; nothing unlisted in OUT.
    listed = {}
    for entry in manifest.get("files") or []:
        rel = entry.get("path", "")
        ok_rel = rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts
        if not rep.check(bool(ok_rel), f"files entry path {rel!r} is relative to OUT"):
            continue
        p = out / rel
        listed[rel] = entry
        if not rep.check(p.is_file(), f"files entry {rel} exists"):
            continue
        digest, size = sha256_file(p)
        rep.check(size == entry.get("size"), f"files {rel}: size {entry.get('size')} == {size} on disk")
        rep.check(digest == entry.get("sha256"), f"files {rel}: sha256 matches the bytes")
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    unlisted = [p for p in on_disk if p not in listed and p != "manifest.json"]
    rep.check(not unlisted, f"every file in OUT is listed in manifest files (unlisted: {unlisted})")

    # Inputs.
    codes = load_codelist(a.codelist)
    ndoo, ndoo_lines, _ = load_opt_outs(opt_path, rep) if opt_path.exists() else (set(), 0, 0)
    if not opt_path.exists():
        rep.check(False, f"opt-out list {opt_path} exists")
    if oo.get("entries") not in (ndoo_lines, len(ndoo)):
        rep.warn(f"manifest opt_outs.entries = {oo.get('entries')}; the list has {ndoo_lines} "
                 f"entry lines, {len(ndoo)} distinct valid numbers")
    tables: dict[str, Table] = {}
    for name in TABLES_ALL:
        t = load_table(a.input_dir, name)
        if t is not None:
            tables[name] = t
    for name in tables_m:
        if name not in tables:
            raise Fatal(f"manifest table {name!r} has no input {a.input_dir}/{name}.csv|.parquet")
    if "clinical_events" not in tables:
        raise Fatal(f"{a.input_dir}/clinical_events.csv is needed for Type 1 opt-outs")

    # Quarantine: which rows did tre reject?
    for name, tm in tables_m.items():
        t = tables[name]
        qfile = qdir / f"{name}.csv"
        rejected = tm.get("rows_rejected", 0)
        if qfile.exists():
            qlines, qreasons = load_quarantine(qfile)
            rep.check(len(qlines) == rejected,
                      f"{name}: quarantine has {len(qlines)} rows, manifest rows_rejected = {rejected}")
            rep.check(dict(qreasons) == {k: v for k, v in (tm.get("rejected_by_reason") or {}).items() if v},
                      f"{name}: quarantine reasons {dict(qreasons)} == manifest rejected_by_reason "
                      f"{tm.get('rejected_by_reason')}")
        else:
            qlines = []
            rep.check(rejected == 0, f"{name}: {rejected} rows rejected but {qfile} does not exist")
        map_quarantine(t, qlines, rep)
        ours = collections.Counter(x for i, r in enumerate(t.rows) if i not in t.quarantined
                                   for x in r.reasons)
        if ours:
            rep.warn(f"{name}: tre accepted rows that this checker would reject: {dict(ours)}")
        theirs = sum(1 for i in t.quarantined if not t.rows[i].reasons)
        if theirs:
            rep.warn(f"{name}: tre rejected {theirs} rows that this checker finds well-formed")

    # (c) opted-out set, computed independently.
    ce = tables["clinical_events"]
    core = [r for i, r in enumerate(ce.rows) if not r.reasons and i not in ce.quarantined]
    t1_strict = dissenters(type1_status(core, codes))
    wider = [r for r in ce.rows if r.nhs and "field_count" not in r.reasons]
    t1_wide = dissenters(type1_status(wider, codes))
    undated = {r.nhs for r in ce.rows if r.nhs and r.reasons
               and (r.fields.get("snomed_code") or "").strip() in codes}
    ambiguous = (t1_strict ^ t1_wide) | (undated - t1_strict)
    if ambiguous:
        rep.warn(f"{len(ambiguous)} patient(s) have Type 1 codes in rows that were rejected "
                 f"or are malformed; their Type 1 status is a design choice, excluded from "
                 f"exact comparisons")
    t1_all = dissenters(type1_status([r for r in ce.rows if r.nhs], codes))
    rep.info(f"opt-outs: {len(ndoo)} on the NDOO list, {len(t1_strict)} Type 1 dissenters "
             f"({len(t1_all)} counting every row with a Type 1 code)")
    if "dissenters" in t1m:
        got = t1m.get("dissenters")
        rep.check(got is not None and len(t1_strict) <= got <= len(t1_strict | ambiguous),
                  f"manifest type1.dissenters = {got}, independent count {len(t1_strict)}"
                  + (f"..{len(t1_strict | ambiguous)}" if ambiguous else ""))
    removed_ndoo = set() if ndoo_exempt else ndoo
    removed_t1 = set() if t1_exempt else t1_strict
    opted = removed_ndoo | removed_t1
    opted_ps = {ps(n): ("NDOO" if n in removed_ndoo else "Type 1") for n in opted}
    amb_ps = {ps(n) for n in ambiguous}

    raw_numbers: set[bytes] = set()
    for t in tables.values():
        for r in t.rows:
            d = re.sub(r"\D", "", r.fields.get(NHS_COL) or "")
            if len(d) == 10:
                raw_numbers.add(d.encode())
    raw_numbers |= {n.encode() for n in ndoo}
    raw_ints = {int(x) for x in raw_numbers}

    print()
    print(f"{'table':<16}{'read':>8}{'reject':>8}{'ndoo':>7}{'type1':>7}{'filter':>8}{'written':>9}")
    for name, tm in tables_m.items():
        t = tables[name]
        missing = [k for k in TABLE_KEYS if k not in tm]
        if not rep.check(not missing, f"{name}: manifest table entry has keys {missing}"):
            continue
        rr, rj, rn, rt, rf, rw = (tm[k] for k in ("rows_read", "rows_rejected", "rows_removed_ndoo",
                                                  "rows_removed_type1", "rows_filtered", "rows_written"))
        print(f"{name:<16}{rr:>8}{rj:>8}{rn:>7}{rt:>7}{rf:>8}{rw:>9}")
        # (b) equation and independent recount.
        rep.check(rr == rj + rn + rt + rf + rw,
                  f"{name}: rows_read {rr} == rejected {rj} + ndoo {rn} + type1 {rt} + filtered {rf} + written {rw}")
        rep.check(rr == len(t.rows), f"{name}: rows_read {rr} == {len(t.rows)} records in {t.path.name}")
        acc = [r for r in t.accepted() if r.nhs]
        exp_n = sum(1 for r in acc if r.nhs in removed_ndoo)
        exp_t = sum(1 for r in acc if r.nhs not in removed_ndoo and r.nhs in removed_t1)
        amb_rows = sum(1 for r in acc if r.nhs not in removed_ndoo and r.nhs in ambiguous)
        rep.check(rn == exp_n, f"{name}: rows_removed_ndoo {rn} == independent count {exp_n}")
        rep.check(exp_t <= rt <= exp_t + amb_rows,
                  f"{name}: rows_removed_type1 {rt} == independent count {exp_t}"
                  + (f" (+ up to {amb_rows} ambiguous)" if amb_rows else ""))
        for i, inp in enumerate(tm.get("inputs") or []):
            ip = Path(inp.get("path", ""))
            cands = [ip, a.input_dir / ip, a.input_dir / ip.name]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                rep.warn(f"{name}: inputs[{i}].path {str(ip)!r} not found; sha256 not checked")
                continue
            digest, size = sha256_file(found)
            rep.check(inp.get("sha256") == digest, f"{name}: inputs[{i}] sha256 matches {found.name}")
            if "bytes" in inp:
                rep.check(inp["bytes"] == size, f"{name}: inputs[{i}] bytes {inp['bytes']} == {size}")
        # Output file entry.
        o = tm.get("output") or {}
        rel = o.get("path", "")
        if not rep.check(bool(rel) and not Path(rel).is_absolute(),
                         f"{name}: output.path {rel!r} is relative to OUT"):
            continue
        op = out / rel
        if not rep.check(op.is_file(), f"{name}: output {rel} exists"):
            continue
        digest, size = sha256_file(op)
        rep.check(o.get("sha256") == digest, f"{name}: output sha256 matches the bytes")
        if "bytes" in o:
            rep.check(o["bytes"] == size, f"{name}: output bytes {o['bytes']} == {size}")
        rep.check(rel in listed, f"{name}: output {rel} is listed in manifest files")
        # (a) readers.
        pseudos = read_with_all_readers(op, rw, rep, name)
        if pseudos is None:
            continue
        rep.check(all(isinstance(p, str) and re.fullmatch(r"[0-9a-f]{64}", p) for p in pseudos),
                  f"{name}: every patient_pseudonym is 64 lowercase hex characters")
        out_count = collections.Counter(pseudos)
        # (c) no opted-out patient.
        leaked = [p for p in out_count if p in opted_ps]
        kinds = collections.Counter(opted_ps[p] for p in leaked)
        rep.check(not leaked, f"{name}: no opted-out patient in the output (found {len(leaked)} "
                              f"pseudonyms of opted-out patients: {dict(kinds)}, e.g. "
                              f"{[short(p) for p in leaked[:3]]})")
        # (d) independent pseudonyms.
        valid_in_table = {ps(r.nhs) for r in t.rows if r.nhs}
        unknown = [p for p in out_count if p not in valid_in_table]
        rep.check(not unknown, f"{name}: every pseudonym is HMAC(key, valid input NHS number) "
                               f"({len(unknown)} are not, e.g. {[short(p) for p in unknown[:3]]}; "
                               f"wrong key, message or encoding?)")
        expected = collections.Counter(ps(r.nhs) for r in acc if r.nhs not in opted)
        for p in amb_ps:
            expected.pop(p, None)
            out_count.pop(p, None)
        if rf == 0:
            missing_ps = expected - out_count
            extra_ps = out_count - expected
            rep.check(not missing_ps and not extra_ps,
                      f"{name}: output pseudonyms (with multiplicity) == expected from accepted, "
                      f"valid, non-opted-out input rows ({sum(missing_ps.values())} rows missing, "
                      f"{sum(extra_ps.values())} extra)")
        else:
            extra_ps = out_count - expected
            rep.check(not extra_ps, f"{name}: output rows are a sub-multiset of the expected rows "
                                    f"({sum(extra_ps.values())} extra; rows_filtered = {rf})")
        if name == "patients":
            want = set(expected)
            got = set(out_count)
            rep.check(got == want if rf == 0 else got <= want,
                      f"patients: output pseudonym set == HMAC of valid, non-opted-out input NHS "
                      f"numbers minus quarantined lines ({len(want - got)} missing, {len(got - want)} extra)")
        # (e)/(f) on decoded values (compression hides them from the byte scan).
        import pyarrow as pa
        import pyarrow.parquet as pq

        tbl = pq.read_table(op)
        for col in tbl.column_names:
            arr = tbl.column(col)
            if pa.types.is_integer(arr.type):
                hits = sum(1 for v in arr.to_pylist() if v in raw_ints)
                rep.check(hits == 0, f"{name}.{col}: no integer value is a raw NHS number ({hits} are)")
            elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                blob = "\n".join(v for v in arr.to_pylist() if v is not None).encode("utf-8", "replace")
                hits = find_raw_numbers(blob, raw_numbers)
                rep.check(hits == 0, f"{name}.{col}: no decoded value contains a raw NHS number ({hits} do)")
                rep.check(key_hex.lower().encode() not in blob.lower(),
                          f"{name}.{col}: no decoded value contains the key")

    # (e) raw NHS numbers, (f) the key: in the bytes of every file in OUT.
    raw_hits = {}
    key_hits = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        h = find_raw_numbers(data, raw_numbers)
        if h:
            raw_hits[str(p.relative_to(out))] = h
        low = data.lower()
        if key_hex.lower().encode() in low or key in data:
            key_hits.append(str(p.relative_to(out)))
    rep.check(not raw_hits, f"no raw NHS number (10-digit, spaced or hyphenated) of any input row "
                            f"in the bytes of OUT ({sum(raw_hits.values())} found: {raw_hits})")
    rep.check(not key_hits, f"the key (hex or raw bytes) appears in no file of OUT (found in {key_hits})")
    rep.info(f"scanned {len(on_disk)} files for {len(raw_numbers)} raw NHS numbers and the key")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
