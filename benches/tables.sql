-- Realistic analyst tables over the demo datasets (benches/usefulness.sh runs each
-- through the TRE's job path at 20,000 and 200,000 patients and reports its verdict,
-- cells, cells hidden and time). Each job is headed by `-- name: NAME`; the SQL is what an
-- analyst would write for a first-look descriptive table.

-- name: age-sex
SELECT age_band, sex, COUNT(*) AS patients FROM patients GROUP BY age_band, sex

-- name: age-band
SELECT age_band, COUNT(DISTINCT patient_pseudonym) AS patients FROM patients GROUP BY age_band

-- name: ethnicity
SELECT ethnicity_code, COUNT(*) AS patients FROM patients GROUP BY ethnicity_code

-- name: sex-ethnicity
SELECT sex, ethnicity_code, COUNT(*) AS patients FROM patients GROUP BY sex, ethnicity_code

-- name: practice-list-size
SELECT practice_code, COUNT(DISTINCT patient_pseudonym) AS patients
FROM registrations WHERE end_date IS NULL GROUP BY practice_code

-- name: region-sex
SELECT substr(r.practice_code, 1, 3) AS region, p.sex, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN registrations r ON r.patient_pseudonym = p.patient_pseudonym
WHERE r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3), p.sex

-- name: region-age
SELECT substr(r.practice_code, 1, 3) AS region, p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN registrations r ON r.patient_pseudonym = p.patient_pseudonym
WHERE r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3), p.age_band

-- name: events-by-code
SELECT snomed_code, COUNT(*) AS events, COUNT(DISTINCT patient_pseudonym) AS patients
FROM clinical_events GROUP BY snomed_code

-- name: code-year
SELECT snomed_code, date_part('year', event_date) AS year, COUNT(*) AS events
FROM clinical_events WHERE event_date >= DATE '2016-01-01' GROUP BY snomed_code, date_part('year', event_date)

-- name: code-year-patients
SELECT snomed_code, date_part('year', event_date) AS year, COUNT(DISTINCT patient_pseudonym) AS patients
FROM clinical_events WHERE event_date >= DATE '2021-01-01' GROUP BY snomed_code, date_part('year', event_date)

-- name: diabetes-by-region
SELECT substr(r.practice_code, 1, 3) AS region, COUNT(DISTINCT e.patient_pseudonym) AS patients
FROM clinical_events e JOIN registrations r ON r.patient_pseudonym = e.patient_pseudonym
WHERE e.snomed_code = '44054006' AND r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3)

-- name: hypertension-age-sex
SELECT p.age_band, p.sex, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '38341003' GROUP BY p.age_band, p.sex

-- name: asthma-age
SELECT p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '195967001' GROUP BY p.age_band

-- name: depression-sex-ethnicity
SELECT p.sex, p.ethnicity_code, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '35489007' GROUP BY p.sex, p.ethnicity_code

-- name: copd-region
SELECT substr(r.practice_code, 1, 3) AS region, COUNT(DISTINCT e.patient_pseudonym) AS patients
FROM clinical_events e JOIN registrations r ON r.patient_pseudonym = e.patient_pseudonym
WHERE e.snomed_code = '13645005' AND r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3)

-- name: af-region-sex
SELECT substr(r.practice_code, 1, 3) AS region, p.sex, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
JOIN registrations r ON r.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '49436004' AND r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3), p.sex

-- name: systolic-mean-age
SELECT p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients, COUNT(e.numeric_value) AS readings,
       AVG(e.numeric_value) AS mean_systolic
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '271649006' GROUP BY p.age_band

-- name: bmi-mean-age-sex
SELECT p.age_band, p.sex, COUNT(e.numeric_value) AS readings, AVG(e.numeric_value) AS mean_bmi
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '60621009' GROUP BY p.age_band, p.sex

-- name: hba1c-mean-region
SELECT substr(r.practice_code, 1, 3) AS region, COUNT(e.numeric_value) AS readings, AVG(e.numeric_value) AS mean_hba1c
FROM clinical_events e JOIN registrations r ON r.patient_pseudonym = e.patient_pseudonym
WHERE e.snomed_code = '43396009' AND r.end_date IS NULL GROUP BY substr(r.practice_code, 1, 3)

-- name: cholesterol-mean-age-sex
SELECT p.age_band, p.sex, COUNT(e.numeric_value) AS readings, AVG(e.numeric_value) AS mean_cholesterol
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '1005671000000105' GROUP BY p.age_band, p.sex

-- name: egfr-mean-age
SELECT p.age_band, COUNT(e.numeric_value) AS readings, AVG(e.numeric_value) AS mean_egfr
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '80274001' GROUP BY p.age_band

-- name: heart-rate-mean-sex
SELECT p.sex, COUNT(e.numeric_value) AS readings, AVG(e.numeric_value) AS mean_heart_rate
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '364075005' GROUP BY p.sex

-- name: alcohol-units-sum-age-sex
SELECT p.age_band, p.sex, COUNT(DISTINCT p.patient_pseudonym) AS patients, SUM(e.numeric_value) AS units
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '160573003' GROUP BY p.age_band, p.sex

-- name: smoking-status-age
SELECT e.snomed_code AS smoking_status, p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code IN ('266919005', '8517006', '77176002') GROUP BY e.snomed_code, p.age_band

-- name: flu-vaccination-age-2025
SELECT p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '86198006' AND e.event_date >= DATE '2025-01-01' GROUP BY p.age_band

-- name: covid-year-age
SELECT date_part('year', e.event_date) AS year, p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN clinical_events e ON e.patient_pseudonym = p.patient_pseudonym
WHERE e.snomed_code = '840539006' AND e.event_date >= DATE '2020-01-01'
GROUP BY date_part('year', e.event_date), p.age_band

-- name: multimorbidity-age
SELECT p.age_band, c.conditions, COUNT(*) AS patients
FROM patients p JOIN (
    SELECT patient_pseudonym, COUNT(DISTINCT snomed_code) AS conditions FROM clinical_events
    WHERE snomed_code IN ('38341003', '44054006', '195967001', '13645005', '35489007', '49436004', '84114007', '709044004')
    GROUP BY patient_pseudonym
) c ON c.patient_pseudonym = p.patient_pseudonym
GROUP BY p.age_band, c.conditions

-- name: prescriptions-by-drug
SELECT dmd_code, COUNT(*) AS issues, COUNT(DISTINCT patient_pseudonym) AS patients, SUM(quantity) AS quantity
FROM medications GROUP BY dmd_code

-- name: prescriptions-drug-year
SELECT dmd_code, date_part('year', issue_date) AS year, COUNT(*) AS issues, SUM(quantity) AS quantity
FROM medications WHERE issue_date >= DATE '2021-01-01' GROUP BY dmd_code, date_part('year', issue_date)

-- name: prescriptions-drug-age
SELECT m.dmd_code, p.age_band, COUNT(DISTINCT p.patient_pseudonym) AS patients
FROM patients p JOIN medications m ON m.patient_pseudonym = p.patient_pseudonym
GROUP BY m.dmd_code, p.age_band

-- name: quantity-mean-drug
SELECT dmd_code, COUNT(quantity) AS issues, AVG(quantity) AS mean_quantity FROM medications GROUP BY dmd_code

-- name: appointments-status-mode
SELECT status, mode, COUNT(*) AS appointments FROM appointments GROUP BY status, mode

-- name: appointments-month-2025
SELECT date_part('month', appointment_date) AS month, COUNT(*) AS appointments, COUNT(DISTINCT patient_pseudonym) AS patients
FROM appointments WHERE appointment_date >= DATE '2025-01-01' AND appointment_date < DATE '2026-01-01'
GROUP BY date_part('month', appointment_date)

-- name: appointments-practice-status
SELECT practice_code, status, COUNT(*) AS appointments FROM appointments GROUP BY practice_code, status

-- name: events-by-practice
SELECT r.practice_code, COUNT(*) AS events, COUNT(DISTINCT e.patient_pseudonym) AS patients
FROM clinical_events e JOIN registrations r ON r.patient_pseudonym = e.patient_pseudonym
WHERE r.end_date IS NULL GROUP BY r.practice_code

-- name: deaths-year-age
SELECT substr(date_of_death, 1, 4) AS year, age_band, COUNT(*) AS deaths
FROM patients WHERE date_of_death IS NOT NULL GROUP BY substr(date_of_death, 1, 4), age_band

-- name: patients-by-lsoa
SELECT lsoa, COUNT(*) AS patients FROM patients GROUP BY lsoa
