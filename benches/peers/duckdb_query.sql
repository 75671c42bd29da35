-- DuckDB's side of benches/query.sh: the same three tables over the same Parquet file
-- ({events}), then the TRE's own work for any of them done by DuckDB (one row per
-- (code, patient) with its rows, non-null values and sum, written as zstd Parquet to
-- {out}, as the TRE writes membership.parquet), for scale.
-- name: count
SELECT snomed_code, COUNT(*) AS n FROM read_parquet('{events}') GROUP BY snomed_code
-- name: patients
SELECT snomed_code, COUNT(DISTINCT patient_pseudonym) AS patients FROM read_parquet('{events}') GROUP BY snomed_code
-- name: mean
SELECT snomed_code, AVG(numeric_value) AS mean_value FROM read_parquet('{events}') GROUP BY snomed_code
-- name: per-patient
COPY (SELECT snomed_code, patient_pseudonym, COUNT(*) AS r, COUNT(numeric_value) AS c, SUM(numeric_value) AS s
      FROM read_parquet('{events}') GROUP BY snomed_code, patient_pseudonym)
TO '{out}' (FORMAT parquet, COMPRESSION zstd)
