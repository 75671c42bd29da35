#!/usr/bin/env bash
# Self-test of verify_extract.py on hand-made fixtures (make_fixture.py), no Rust needed:
# the clean fixture must pass, and each planted fault must be caught with its message.
# Usage: tests/interop/selftest.sh   (creates the venv via setup_venv.sh if needed)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$(bash "$here/setup_venv.sh" | tail -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail=0
# plant | expected exit | text the report must contain
while IFS='|' read -r plant want_rc want_text; do
    "$py" "$here/make_fixture.py" "$work/$plant" --plant "$plant"
    set +e
    "$py" "$here/verify_extract.py" "$work/$plant/in" "$work/$plant/out" "$work/$plant/key" \
        >"$work/$plant.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq "$want_rc" ] && grep -qF -- "$want_text" "$work/$plant.log"; then
        echo "ok    plant=$plant (exit $rc, reported: $want_text)"
    else
        echo "FAIL  plant=$plant: exit $rc (want $want_rc), want text: $want_text"
        sed 's/^/      | /' "$work/$plant.log"
        fail=$((fail + 1))
    fi
done <<'CASES'
none|0|verify_extract: OK
optout|1|no opted-out patient in the output (found 1 pseudonyms of opted-out patients: {'Type 1': 1}
raw|1|clinical_events.unit: no decoded value contains a raw NHS number (1 do)
raw-manifest|1|found: {'manifest.json': 1}
key|1|the key (hex or raw bytes) appears in no file of OUT (found in ['medications.parquet'])
wrong-count|1|medications: DuckDB reads 3 rows, want 4
CASES
total=6
echo "$((total - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]
