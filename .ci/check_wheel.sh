#!/usr/bin/env bash
# Packaging check: build the wheel from the tracked sources, check it holds every file of
# src/fivewsi, install it into a fresh venv and run `fivewsi demo` from outside the source tree.
#
#   .ci/check_wheel.sh            (make wheel-check)
#
# PYTHON: the interpreter for the fresh venv (python3). TORCH: installed first, as a user would
# (torch==2.13.0, the CPU build the Makefile uses). DEMO_ARGS: extra demo options (none: the
# README's demo; "--size small" runs every stage on a tiny cohort). KEEP=1 keeps the temp folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
DEMO_ARGS=${DEMO_ARGS:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/fivewsi-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] && echo "work folder: $work" || trap 'rm -rf "$work"' EXIT
start=$(date +%s)
step() { echo "[wheel-check $(( $(date +%s) - start )) s] $*"; }

# A copy of what a clone would hold (tracked files plus new, not-ignored ones): no build
# leftovers, caches or venvs from this checkout can reach the wheel.
step "copying the source tree"
mkdir "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf -) | tar -xf - -C "$work/src"

# The viewer's OpenSeadragon is built from npm (make assets), ignored by git, shipped in the wheel.
step "make assets (npm ci: the viewer's OpenSeadragon)"
make -C "$root" --no-print-directory assets
vendor=src/fivewsi/view/static/vendor
mkdir -p "$work/src/$vendor" && cp -r "$root/$vendor/." "$work/src/$vendor/"

step "fresh venv, $TORCH"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip -q)
"${pip[@]}" install "$TORCH"

step "building the wheel"
"${pip[@]}" wheel --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/fivewsi-*.whl)
"$work/venv/bin/python" "$root/.ci/wheel_contents.py" "$wheel" "$work/src"

step "installing $(basename "$wheel") and its dependencies"
"${pip[@]}" install "$wheel"

# Run from an empty folder with no PYTHONPATH, so only the installed package can be imported.
step "fivewsi demo $DEMO_ARGS"
mkdir "$work/run"
cd "$work/run"
# shellcheck disable=SC2086  # DEMO_ARGS is a list of options
env -u PYTHONPATH "$work/venv/bin/python" -c \
  "import fivewsi, sys; sys.exit(0 if '$work/venv/' in fivewsi.__file__ else f'imported {fivewsi.__file__}')"
env -u PYTHONPATH "$work/venv/bin/fivewsi" demo --out "$work/run/demo" --no-progress $DEMO_ARGS
test -s "$work/run/demo/predictions/report.html"
test -s "$(env -u PYTHONPATH "$work/venv/bin/python" -c \
  "import fivewsi.view.server as s; print(s.VENDOR / 'openseadragon.min.js')")"
step "wheel check passed"
