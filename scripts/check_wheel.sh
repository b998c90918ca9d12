#!/usr/bin/env bash
# Build the wheel and the sdist, check them with twine, install the wheel (with [all]) into a
# fresh virtual environment outside the source tree and run the quick start from it.
# Called by scripts/test.sh after pytest; expects .venv with the dev extra (build, twine).
# ECLEARN_SKIP_WHEEL=1 skips it for fast local iterations (not under CI=true).
# ECLEARN_KEEP_WHEEL_TMP=1 keeps the temporary folder (dist/, venv/, runs/) for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

if [ "${ECLEARN_SKIP_WHEEL:-0}" = "1" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "check_wheel: ECLEARN_SKIP_WHEEL=1 is ignored under CI=true"
  else
    echo "check_wheel: skipped (ECLEARN_SKIP_WHEEL=1)"
    exit 0
  fi
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/eclearn-wheel.XXXXXX")"
case "$tmp" in "$root"/*) echo "check_wheel: temp dir $tmp is inside the source tree" >&2; exit 1 ;; esac
if [ "${ECLEARN_KEEP_WHEEL_TMP:-0}" = "1" ]; then
  echo "check_wheel: keeping $tmp"
else
  trap 'rm -rf "$tmp"' EXIT
fi
start=$SECONDS

echo "check_wheel: building sdist and wheel (isolated; the wheel is built from the sdist)"
.venv/bin/python -m build --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 || {
  cat "$tmp/build.log" >&2; echo "check_wheel: build failed" >&2; exit 1; }
shopt -s nullglob
wheels=("$tmp"/dist/eclearn-*.whl)
sdists=("$tmp"/dist/eclearn-*.tar.gz)
shopt -u nullglob
if [ "${#wheels[@]}" -ne 1 ] || [ "${#sdists[@]}" -ne 1 ]; then
  ls -l "$tmp/dist" >&2; echo "check_wheel: expected one wheel and one sdist" >&2; exit 1
fi
wheel="${wheels[0]}"
sdist="${sdists[0]}"
echo "check_wheel: built $(basename "$wheel") $(basename "$sdist")"

.venv/bin/twine check --strict "$wheel" "$sdist"

# What the package needs at run time is in the wheel; the sdist carries the changelog.
.venv/bin/python - "$wheel" "$sdist" <<'EOF'
import pathlib, sys, tarfile, zipfile

wheel, sdist = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
src = pathlib.Path("src")
need = {p.relative_to(src).as_posix() for p in src.joinpath("eclearn").rglob("*")
        if p.is_file() and (p.suffix in {".py", ".toml"} or p.name == "py.typed")
        and "__pycache__" not in p.parts}
missing = sorted(need - names)
if missing:
    sys.exit(f"check_wheel: missing from the wheel: {missing}")
top = pathlib.Path(sdist).name.removesuffix(".tar.gz")
members = set(tarfile.open(sdist).getnames())
missing = [f for f in ("README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO")
           if f"{top}/{f}" not in members]
if missing:
    sys.exit(f"check_wheel: missing from the sdist: {missing}")
print(f"check_wheel: wheel holds all {len(need)} package files (py.typed, "
      f"{sum(n.endswith('.toml') for n in need)} presets); sdist holds README, CHANGELOG")
EOF

echo "check_wheel: fresh venv in $tmp/venv: torch==2.13.0, then the wheel with [all]"
python3 -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip >/dev/null
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet "${wheel}[all]"

# Run from a folder outside the repo, with nothing on PYTHONPATH, so only the venv's copy
# of eclearn can be imported.
mkdir -p "$tmp/work"
cd "$tmp/work"
unset PYTHONPATH
where="$("$py" -c 'import eclearn; print(eclearn.__file__)')"
echo "check_wheel: eclearn imports from $where"
case "$where" in
  "$tmp/venv/"*) ;;
  *) echo "check_wheel: eclearn did not resolve into the fresh venv" >&2; exit 1 ;;
esac
"$py" - <<'EOF'
from importlib import metadata, resources

import eclearn

assert metadata.version("eclearn") == eclearn.__version__, (metadata.version("eclearn"), eclearn.__version__)
assert resources.files("eclearn").joinpath("py.typed").is_file(), "py.typed not installed"
print(f"check_wheel: eclearn {eclearn.__version__} installed; py.typed present")
EOF
"$tmp/venv/bin/eclearn" --version
"$tmp/venv/bin/eclearn" run convection-quick --out "$tmp/runs"
n_metrics="$(find "$tmp/runs" -name metrics.json | wc -l)"
if [ "$n_metrics" -lt 1 ]; then
  echo "check_wheel: the quick start wrote no metrics.json" >&2; exit 1
fi
echo "check_wheel: ok ($n_metrics complete runs, $((SECONDS - start)) s)"
