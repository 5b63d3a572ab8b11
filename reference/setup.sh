#!/usr/bin/env bash
# Makes (or reuses) the reference Python environment at reference/.venv from the pinned requirements.
#   reference/setup.sh          the environment the tests and golden scripts need
#   reference/setup.sh --peer   plus llama-cpp-python, for the quality table (compiles llama.cpp: minutes)
# A stamp holds the requirements' hash, so a second run with unchanged pins does nothing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${PERCH_REFERENCE_VENV:-$here/.venv}
python=${PYTHON:-python3}
files=("$here/requirements.txt")
[[ ${1:-} == --peer ]] && files+=("$here/requirements-peer.txt")
stamp=$venv/.perch-stamp
# Tests that need the environment call this script; they may run at once: one builds, the others then reuse.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${files[@]/#/-r}" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c 'import torch, transformers' # fail here, not later, when the install did not take
# The peer stamp also covers the base requirements; a base-only run after it keeps the peer stamp.
if [[ ! -f $stamp ]] || [[ ${1:-} == --peer ]]; then echo "$want" >"$stamp"; fi
