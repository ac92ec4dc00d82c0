#!/usr/bin/env bash
# Wheels of the pure-Python packages that a GPU machine without a package index lacks, for device_check.sh to
# install from .whl/ (ignored by git; a copy of the working tree must name it to take it along).
#
#     bash benchmarks/device_wheels.sh [PACKAGE ...]     # default: yacs timm submitit, at requirements.txt's versions
#
# They are pure Python, so the machine's Python version does not matter. TorchCodec is left out on purpose: its
# compiled part must match the machine's torch, and without it JPEG files are decoded by PIL (the same pixels).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
packages=("$@")
(( ${#packages[@]} )) || packages=(yacs timm submitit)
mkdir -p .whl
for name in "${packages[@]}"; do
    pin=$(grep -i -E "^${name}==" requirements.txt || true)
    [ -n "$pin" ] || { echo "$name is not pinned in requirements.txt" >&2; exit 2; }
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "$pin"
done
ls -l .whl
