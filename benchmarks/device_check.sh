#!/usr/bin/env bash
# The one device check, for a fresh GPU machine: the CUDA tests (pytest -m cuda) and the GPU benchmark sections
# (TOP-ReID's train step per backbone and precision; DeMo's (configs/RGBNT201/DeMo.yml, CLIP ViT-B/16) and EDITOR's
# (configs/RGBNT201/EDITOR.yml, ViT-B/16) train step and seven-setting evaluation; TOP-ReID's seven-setting
# evaluation; a synthetic RGBNT201-sized epoch), everything written into one folder, ${OUT:-bench_out}, within 7
# minutes in all (410 s; each step gets a share of what is left).
# That folder ends with four files: device_check.log (everything printed), summary.txt, results.json (the sections'
# figures merged) and detail.tar.gz (nvidia-smi, the environment, the tests' report, each section's output).
#
#     bash benchmarks/device_wheels.sh          # once, on a machine with a package index: fills .whl/
#     bash benchmarks/device_check.sh           # on the GPU machine (with .whl/ copied along); then read $OUT/summary.txt
#
# Python packages: used as installed when they import. Missing ones are installed from the wheels in .whl/ (pure
# Python, --no-deps, into .device-site/ on PYTHONPATH), else, where a package index is reachable, from
# requirements.txt into a venv (.venv-device) that sees the system packages. TorchCodec is optional (PIL decodes
# JPEG files without it).
#
# DEVICE_CHECK_SMOKE=1 runs the benchmark sections with tiny sizes on any device (their figures mean nothing): the
# whole script can be tried on a machine without a GPU, where the CUDA tests are skipped.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
DETAIL=$OUT/detail
mkdir -p "$DETAIL"
exec > >(tee -a "$OUT/device_check.log") 2>&1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# DEVICE_CHECK_STRETCH multiplies every time limit (the smoke test on a CPU shared with other test processes).
STRETCH=${DEVICE_CHECK_STRETCH:-1}
TOTAL=$(( ${DEVICE_CHECK_SECONDS:-410} * STRETCH ))
SMOKE=()
[ "${DEVICE_CHECK_SMOKE:-0}" = 1 ] && SMOKE=(--smoke)
left() { echo $(( TOTAL - SECONDS )); }
cap() { local want=$(( $1 * STRETCH )) l; l=$(left); (( l < want )) && want=$l; (( want < 1 )) && want=1; echo "$want"; }
step() { echo "== $(date +%T) [$SECONDS s] $*"; }
failed=()  # the steps that exited non-zero: the script's own exit status is 1 when there is any
record() {  # record STEP EXIT_STATUS (124: stopped by timeout, 137: killed after it)
    if (( $2 == 124 || $2 == 137 )); then failed+=("$1 (out of time)"); elif (( $2 )); then failed+=("$1 (exit $2)"); fi
}

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
need='import torch, torchvision, timm, yacs, cv2, PIL, tqdm, tensorboard, safetensors, pytest'
have() { "$PY" -c "$need" 2>/dev/null; }
if ! have; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        step "installing the wheels in .whl/"
        timeout -k 5 "$(cap 60)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target .device-site .whl/*.whl
        export PYTHONPATH=$PWD/.device-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if ! have; then
        step "installing requirements.txt"
        "$PY" -m venv --system-site-packages .venv-device && PY=.venv-device/bin/python
        timeout -k 5 "$(cap 180)" "$PY" -m pip install -q --retries 0 --timeout 10 -r requirements.txt
    fi
    "$PY" -c "$need" || { echo "packages missing (see the import error above); stopping"; exit 2; }
fi

step "environment"
nvidia-smi > "$DETAIL/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$DETAIL/env.json" <<'PYEOF'
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, indent=1))
PYEOF
cat "$DETAIL/env.json"

step "CUDA tests"
timeout -k 10 "$(cap 100)" "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --durations=0 \
    --junitxml="$DETAIL/pytest_cuda.xml" > "$DETAIL/pytest_cuda.txt" 2>&1
rc=$?
echo "pytest exit $rc" >> "$DETAIL/pytest_cuda.txt"
record "CUDA tests" $rc
tail -n 15 "$DETAIL/pytest_cuda.txt"

# Most important first; each section writes its own file, so a section cut short loses only itself.
for section in cuda:150 demo:60 editor:60 eval:45 epoch:90; do
    name=${section%%:*}
    step "benchmark section $name"
    timeout -k 10 "$(cap "${section##*:}")" "$PY" benchmarks/run.py --only "$name" "${SMOKE[@]}" \
        --output "$DETAIL/results_$name.json" > "$DETAIL/bench_$name.txt" 2>&1
    rc=$?
    echo "exit $rc" >> "$DETAIL/bench_$name.txt"
    record "benchmark section $name" $rc
    grep -v " INFO " "$DETAIL/bench_$name.txt" | tail -n 12
done

step "summary"
"$PY" - "$OUT" "$DETAIL" <<'PYEOF' | tee "$OUT/summary.txt"
import json, re, sys
from pathlib import Path
out, detail = Path(sys.argv[1]), Path(sys.argv[2])
merged = {}
for name in ("cuda", "demo", "editor", "eval", "epoch"):
    f = detail / f"results_{name}.json"
    if f.exists():
        data = json.loads(f.read_text())
        merged.setdefault("machine", data.get("machine"))
        for key in (name, f"{name}_smoke"):  # the second with DEVICE_CHECK_SMOKE=1
            if key in data:
                merged[key] = data[key]
(out / "results.json").write_text(json.dumps(merged, indent=2))
print("sections measured:", [k for k in merged if k != "machine"])
for name in ("cuda", "demo", "editor", "eval", "epoch"):
    text = detail / f"bench_{name}.txt"
    if text.exists():  # the figure lines, printed once as measured and again in the closing report
        lines = [l for l in text.read_text().splitlines() if re.match(r"(train step|evaluation|epoch) \D", l)]
        print("\n".join(dict.fromkeys(lines)))
PYEOF
tar -czf "$OUT/detail.tar.gz" -C "$OUT" detail && rm -r "$DETAIL"
step "done in $SECONDS s; files in $OUT"
if (( ${#failed[@]} )); then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
