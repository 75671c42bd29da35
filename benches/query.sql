-- The three tables of issue 22 point 9, as an analyst writes them (benches/query.sh):
-- the TRE's job path over the installed clinical_events table. DuckDB's versions are in
-- benches/peers/duckdb_query.sql.
-- name: count
SELECT snomed_code, COUNT(*) AS n FROM clinical_events GROUP BY snomed_code
-- name: patients
SELECT snomed_code, COUNT(DISTINCT patient_pseudonym) AS patients FROM clinical_events GROUP BY snomed_code
-- name: mean
SELECT snomed_code, AVG(numeric_value) AS mean_value FROM clinical_events GROUP BY snomed_code
