#!/usr/bin/env bash
# The test suite against an installed wheel instead of the editable checkout.
#   tools/test_installed.sh [PYTEST ARGS...]       e.g. tools/test_installed.sh -x tests/test_pipelines.py
#
# 1. builds a wheel of the project (pip wheel --no-deps) from a fresh copy of pyproject.toml, README.md and zoo/, so
#    that no stale build/ or *.egg-info of the checkout can reach it;
# 2. installs it with pip install --no-deps --target into a temporary folder SITE (the dependencies are the venv's);
# 3. copies tests/ and pyproject.toml (its [tool.pytest.ini_options]) into a temporary folder outside the repository
#    and runs pytest there with PYTHONPATH=SITE, so that `import zoo` finds the installed copy (PYTHONPATH comes
#    before the editable install's finder). It prints zoo.__file__ and stops if that is inside the repository.
# Tests that read files of the checkout itself (docs/, tools/, the sources a wheel is built from) are skipped in this
# mode (tests/conftest.py: requires_checkout). The exit status is pytest's.
# Environment: PYTHON (default .venv/bin/python of the repository), KEEP=1 keeps the temporary folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/mmzoo-installed.XXXXXX")"
if [ "${KEEP:-0}" = "1" ]; then
    echo "[test_installed] keeping $work" >&2
else
    trap 'rm -rf "$work"' EXIT
fi
pip=("$python" -m pip --disable-pip-version-check -q)

# 1. the wheel, from a clean copy of the sources (the files the wheel is made of, and nothing else)
mkdir -p "$work/src" "$work/dist"
cp "$root/pyproject.toml" "$root/README.md" "$work/src/"
(cd "$root" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - zoo) | tar -xf - -C "$work/src"
(cd "$work/src" && "${pip[@]}" wheel --no-deps --no-build-isolation -w "$work/dist" .)
wheel="$(ls "$work"/dist/mmzoo-*.whl)"
echo "[test_installed] built $(basename "$wheel")"

# 2. installed into a folder of its own
"${pip[@]}" install --no-deps --no-index --target "$work/site" "$wheel"

# 3. the suite, copied outside the repository and run against the installed copy
mkdir -p "$work/suite"
cp -r "$root/tests" "$work/suite/tests"
cp "$root/pyproject.toml" "$work/suite/"
find "$work/suite" -name __pycache__ -prune -exec rm -rf {} +
cd "$work/suite"
export PYTHONPATH="$work/site"
where="$("$python" -c 'import zoo; print(zoo.__file__)')"
echo "[test_installed] zoo.__file__ = $where"
case "$(realpath "$where")" in
    "$(realpath "$root")"/*)
        echo "[test_installed] error: zoo is imported from the repository, not from the installed wheel" >&2
        exit 1 ;;
esac
case "$(realpath "$where")" in
    "$(realpath "$work/site")"/*) ;;
    *)
        echo "[test_installed] error: zoo is not imported from the installed copy in $work/site" >&2
        exit 1 ;;
esac
set +e
"$python" -m pytest -p no:cacheprovider "$@"
status=$?
set -e
echo "[test_installed] pytest exit status $status (zoo from $where)"
exit "$status"
