#!/usr/bin/env bash
# The Python-side checks, in one run: what `cargo test` (Rust only) does not cover.
#   1. selftest     verify_extract.py catches each fault planted in hand-made fixtures
#   2. interop      a real `tre extract` output read by pyarrow, polars, pandas and DuckDB,
#                   every pseudonym re-derived with Python's own hmac, opt-outs re-applied
#   3. acro         ACRO's crosstab checks side by side with `tre check --rules acro-default`:
#                   every cell ACRO flags, we flag under the same rule
# Versions are pinned (tests/interop/requirements.txt, tests/acro/requirements.txt); the
# venvs live under target/. Every failure is fatal and nothing is skipped: a missing
# Python, PyPI or package fails the run loudly.
#
# Usage: tests/interop/run.sh [selftest|interop|acro ...]   (default: all three)
# Environment: TRE (a tre binary; default: target/debug/tre as `cargo test` builds it; the
# test build is reused because a plain `cargo build` resolves features differently and
# would rebuild DataFusion).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

say() { echo "interop: $*" >&2; }
checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(selftest interop acro)

if [ -z "${TRE:-}" ]; then
    say "building tre (cargo test --no-run)"
    cargo test --quiet --no-run
    TRE="$repo/target/debug/tre"
fi
[ -x "$TRE" ] || { say "FATAL: $TRE is not an executable"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
result() { # name rc
    if [ "$2" -eq 0 ]; then
        echo "ok    $1"
        passed=$((passed + 1))
    else
        echo "FAIL  $1 (exit $2)"
        failed=$((failed + 1))
    fi
}

run_selftest() {
    bash "$here/selftest.sh"
}

run_interop() {
    local py d
    py="$(bash "$here/setup_venv.sh" | tail -n 1)"
    d="$work/interop"
    mkdir -p "$d"
    "$TRE" generate --patients 2000 --seed 7 --out "$d/in" >/dev/null
    "$TRE" keygen --out "$d/key" >/dev/null
    "$TRE" extract --policy policies/demo.toml --input "$d/in" \
        --opt-outs "$d/in/opt_outs.txt" --opt-outs-as-of "$(date -u +%F)" \
        --key-file "$d/key" --out "$d/out" --quiet
    "$py" "$here/verify_extract.py" "$d/in" "$d/out" "$d/key" --policy policies/demo.toml
}

run_acro() {
    local py out last
    py="$(VENV="$repo/target/venv-acro" bash "$here/setup_venv.sh" \
        "$repo/tests/acro/requirements.txt" acro | tail -n 1)"
    mkdir -p "$work/acro"
    out="$("$py" "$repo/tests/acro/side_by_side.py" "$TRE" "$work/acro" 30)"
    last="$(printf '%s\n' "$out" | tail -n 1)"
    echo "$last"
    # The claim (every ACRO flag is ours) is the script's exit status; on top, ACRO must
    # have flagged cells under every rule, so the comparison means something.
    "$py" - "$last" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
assert j["missing"] == [], f"ACRO flags cells we do not: {j['missing']}"
for rule in ("threshold", "p-ratio", "nk-rule"):
    assert j["acro_flags"].get(rule, 0) > 0, f"ACRO flagged no {rule} cell"
PY
}

for c in "${checks[@]}"; do
    case "$c" in
        selftest | interop | acro) ;;
        *) say "unknown check '$c' (selftest, interop, acro)"; exit 2 ;;
    esac
    say "running $c"
    set +e
    ( set -e; "run_$c" )
    rc=$?
    set -e
    result "$c" "$rc"
done
echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
