#!/usr/bin/env bash
# The GPU check in two calls, for a machine with Python 3.12, torch, torchvision, timm and
# numpy but no open_clip_torch, no ROS and no network.
#
#   bash scripts/device_check.sh --fetch [--with-opencv]   # HERE: wheels + fixtures into .device_wheels/
#   bash scripts/device_check.sh --call 1 [options]         # ON THE DEVICE: install the wheels, run call 1's plan
#   bash scripts/device_check.sh --call 2 [options]         # right after, on the same started machine
#
# .device_wheels/ is git-ignored: it travels to the device machine only when the call names it
# in `carry` (README, GPU section, has the exact device tool calls, what travels and each
# call's time limit: call 1 450 s of checks, call 2 255 s).
#
# --fetch (needs the venv and the registry): downloads the pinned (constraints/common.txt) cp312
# manylinux wheels of the packages that machine lacks into .device_wheels/, copies the parity
# fixture cases beside them (.device_wheels/fixtures; FIXTURE_CASES="case ..." overrides the
# list, "" ships none), prints every size and refuses a total over LIMIT_MIB (60: the working
# tree and what travels with it must stay under 64). opencv-python-headless alone is 57.6
# MiB: it is left out unless --with-opencv, which then ships no fixtures by default and needs
# LIMIT_MIB=62 (parity cannot run in that run). torchvision cannot be matched to an unknown
# torch build: none is shipped; the report says whether the machine has one.
#
# Default mode: installs each shipped wheel whose module the machine lacks with
# `pip install --no-index --no-deps --target <tmp>` (unzipped when there is no pip); a wheel
# it does not know or cannot install is a line on stderr and in the report (the rows that need
# it say so), never an abort. Then it puts the source tree and that folder on PYTHONPATH and
# execs `python -m ovseg_dev.device_check --out $OUT/device_check` (the report:
# device_check_call<N>.json + .md, rewritten after every row), so the device tool's stop
# signal reaches the check, which kills the row in flight and writes the report.
# PYTHON overrides the interpreter (default python3); further arguments go to device_check
# (e.g. --small, --only parity, --time-limit 300).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheels="${DEVICE_WHEELS:-$repo/.device_wheels}"  # DEVICE_WHEELS: another folder (tests)
limit_bytes=$((${LIMIT_MIB:-60} * 1024 * 1024))
# package (as pinned in constraints/common.txt) -> the module it provides
declare -A module_of=([open_clip_torch]=open_clip [ftfy]=ftfy [wcwidth]=wcwidth [regex]=regex [tqdm]=tqdm
                      [opencv-python-headless]=cv2)
packages=(open_clip_torch ftfy wcwidth regex tqdm)
all_cases="sed_b_seed1 sed_b_seed1_cer24 san_b_seed1 sed_l_seed1 san_l_seed1"

pin() {  # the constraints/common.txt line of a package, e.g. open_clip_torch==3.3.0
  local line
  line="$(grep -i -E "^${1//-/[-_]}==" "$repo/constraints/common.txt")" || { echo "device_check: $1 is not pinned in constraints/common.txt" >&2; exit 1; }
  echo "$line"
}

fetch() {  # $1: the fixture cases to ship, space-separated
  local fixture_cases
  read -r -a fixture_cases <<<"$1"
  # shellcheck source=scripts/venv_path.sh
  source "$repo/scripts/venv_path.sh"
  local pip pins=() name
  pip="$(ovseg_venv_path "$repo")/bin/pip"
  [ -x "$pip" ] || { echo "device_check: no venv pip at $pip (run scripts/setup.sh)" >&2; exit 1; }
  for name in "${packages[@]}"; do pins+=("$(pin "$name")"); done
  rm -rf "$wheels"
  mkdir -p "$wheels/fixtures"
  # The device's interpreter, not this one: CPython 3.12 on manylinux x86-64, binary wheels only.
  "$pip" download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$wheels" "${pins[@]}"
  local fixtures="$repo/../shared/fixtures" item
  for item in seeded_weights.py manifests README.md ${fixture_cases[@]+"${fixture_cases[@]}"}; do
    [ -e "$fixtures/$item" ] || { echo "device_check: $fixtures/$item is missing" >&2; exit 1; }
    cp -r "$fixtures/$item" "$wheels/fixtures/"
  done
  chmod -R u+w "$wheels"  # the shared fixtures are read-only; a later --fetch must be able to remove the copy
  local commit
  commit="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
  printf '{"commit": "%s", "fetched": "%s", "fixture_cases": "%s"}\n' "$commit" "$(date -u +%FT%TZ)" "${fixture_cases[*]}" \
    >"$wheels/manifest.json"
  echo "shipped in .device_wheels/ (git-ignored: name it in the device call's carry):"
  (cd "$wheels" && du -b --apparent-size -s ./*.whl fixtures/* | sort -k2 | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}')
  local total
  total="$(du -b --apparent-size -s "$wheels" | cut -f1)"
  printf '  %8.2f MiB  total (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" $((limit_bytes / 1048576))
  if [ "$total" -gt "$limit_bytes" ]; then
    echo "device_check: .device_wheels is over ${LIMIT_MIB:-60} MiB: ship fewer cases (FIXTURE_CASES=\"...\") or raise LIMIT_MIB" >&2
    exit 1
  fi
}

install_and_run() {
  local python="${PYTHON:-python3}" site wheel name module todo=()
  site="$(mktemp -d)/site"
  if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "device_check: no wheels in $wheels: carry .device_wheels with the call (made here by --fetch); the report says what cannot be imported" >&2
  fi
  for wheel in "$wheels"/*.whl; do
    [ -e "$wheel" ] || break
    name="$(basename "$wheel" | cut -d- -f1 | tr _ -)"
    [ "$name" = open-clip-torch ] && name=open_clip_torch
    module="${module_of[$name]:-}"
    if [ -z "$module" ]; then
      echo "device_check: $(basename "$wheel"): no module known for package $name; installing it anyway" >&2
      todo+=("$wheel")
    elif ! "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
      todo+=("$wheel")
    fi
  done
  if [ "${#todo[@]}" -gt 0 ]; then
    echo "device_check: installing into $site: ${todo[*]##*/}" >&2
    if ! "$python" -m pip install --quiet --no-index --no-deps --target "$site" "${todo[@]}"; then
      echo "device_check: pip failed or is missing; unzipping the wheels instead" >&2
      for wheel in "${todo[@]}"; do "$python" -m zipfile -e "$wheel" "$site" || echo "device_check: cannot unpack $wheel" >&2; done
    fi
  fi
  export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
  cd "$repo"
  exec "$python" -m ovseg_dev.device_check --out "${OUT:-$repo/out}/device_check" "$@"
}

if [ "${1:-}" = --fetch ]; then
  shift
  if [ "${1:-}" = --with-opencv ]; then
    packages+=(opencv-python-headless)
    all_cases=""  # 57.6 MiB of OpenCV leaves no room for them
  fi
  fetch "${FIXTURE_CASES-$all_cases}"
else
  install_and_run "$@"
fi
