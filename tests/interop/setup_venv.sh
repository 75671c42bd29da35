#!/usr/bin/env bash
# Create (once) a pinned Python venv. Default: the one used by the interop checker and the
# peer benchmarks, target/venv-interop with the packages pinned in
# tests/interop/requirements.txt. Arguments (optional): REQUIREMENTS_FILE "IMPORTS" (a
# comma-separated list of modules that must import), e.g. for the ACRO venv:
#   VENV=target/venv-acro setup_venv.sh tests/acro/requirements.txt acro
#
# Idempotent: when the venv exists and its stamp matches the requirements file, it only
# re-checks the imports (well under a second). Every failure is fatal, in CI (CI=true) and
# outside it alike: a missing tool never turns into a silently skipped test.
#
# Environment: VENV (default <repo>/target/venv-interop), PYTHON (default python3).
# Prints the venv's python path as its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${VENV:-$repo/target/venv-interop}"
python="${PYTHON:-python3}"
req="${1:-$here/requirements.txt}"
imports="${2:-pyarrow, polars, pandas, duckdb}"

die() {
    echo "setup_venv.sh: FATAL: $*" >&2
    [ "${CI:-}" = "true" ] && echo "setup_venv.sh: (CI=true: failing the run)" >&2
    exit 1
}

command -v "$python" >/dev/null 2>&1 || die "'$python' not found; install Python 3.11 or set PYTHON"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$python is older than 3.11 (tomllib is needed)"

mkdir -p "$(dirname "$venv")"
# Tests run in parallel threads: serialise creation with a lock next to the venv.
exec 9>"$venv.lock"
flock 9 || die "cannot lock $venv.lock"

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
check_imports() {
    "$venv/bin/python" -c "import $imports" 2>/dev/null
}

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && check_imports; then
    echo "$venv/bin/python"
    exit 0
fi

echo "setup_venv.sh: creating $venv (pip install -r $req)" >&2
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || die "python -m venv $venv failed"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 \
    || die "pip install -r $req failed (is PyPI reachable?)"
check_imports || die "packages installed but 'import $imports' fails"
echo "$want" >"$stamp"
echo "$venv/bin/python"
