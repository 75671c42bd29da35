#!/usr/bin/env python3
"""Peer: the bench extract in DuckDB SQL. DuckDB has no HMAC, so the pseudonym is
sha256(key_hex || nhs_number): same cost class, different values (not comparable to tre's)."""

import re
import time

import duckdb

from common import done, parse_args, read_key


def lit(path):
    return "'" + str(path).replace("'", "''") + "'"


def main():
    a = parse_args(__doc__)
    started = time.time()
    _, key_hex = read_key(a.key_file)
    assert re.fullmatch(r"[0-9a-f]{64}", key_hex)
    con = duckdb.connect()
    con.execute(f"""
        CREATE TEMP TABLE codes AS
            SELECT trim(code) AS code, trim(kind) AS kind
            FROM read_csv({lit(a.codelist)}, header = true, all_varchar = true);
        CREATE TEMP TABLE optouts AS
            SELECT DISTINCT regexp_replace(nhs_number, '[ -]', '', 'g') AS nhs
            FROM read_csv({lit(a.opt_outs)}, header = true, columns = {{'nhs_number': 'VARCHAR'}})
            WHERE nhs_number IS NOT NULL;
        CREATE VIEW ev AS
            SELECT * FROM read_csv({lit(a.input)}, header = true, columns = {{
                'nhs_number': 'VARCHAR', 'event_date': 'DATE', 'snomed_code': 'VARCHAR',
                'numeric_value': 'DOUBLE', 'unit': 'VARCHAR'}});
        CREATE TEMP TABLE type1 AS
            SELECT nhs FROM (
                SELECT regexp_replace(e.nhs_number, '[ -]', '', 'g') AS nhs, c.kind, e.event_date
                FROM ev e JOIN codes c ON e.snomed_code = c.code
                QUALIFY row_number() OVER (
                    PARTITION BY nhs ORDER BY event_date DESC, (kind = 'dissent') DESC) = 1)
            WHERE kind = 'dissent';
    """)
    con.execute(f"""
        COPY (
            SELECT sha256('{key_hex}' || n.nhs) AS patient_pseudonym,
                   n.event_date, n.snomed_code, n.numeric_value, n.unit
            FROM (SELECT regexp_replace(nhs_number, '[ -]', '', 'g') AS nhs, * FROM ev) n
            ANTI JOIN optouts o ON n.nhs = o.nhs
            ANTI JOIN type1 t ON n.nhs = t.nhs
        ) TO {lit(a.out)} (FORMAT parquet, COMPRESSION zstd)
    """)
    written = con.execute(f"SELECT count(*) FROM read_parquet({lit(a.out)})").fetchone()[0]
    dissenters = con.execute("SELECT count(*) FROM type1").fetchone()[0]
    done("duckdb", None, written, a.out, started, type1_dissenters=dissenters)


if __name__ == "__main__":
    main()
