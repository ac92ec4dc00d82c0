#!/usr/bin/env bash
# The one device check, for a fresh GPU machine: the CUDA tests (pytest -m cuda) and the GPU benchmark sections
# (train step per backbone and precision, the seven-setting evaluation, a synthetic RGBNT201-sized epoch), everything
# written into one folder, ${OUT:-bench_out}, within 6 minutes in all (each step gets a share of what is left).
#
#     bash benchmarks/device_check.sh            # then read $OUT/summary.txt
#
# Python packages: used as installed when torch, timm, yacs, cv2 and torchcodec import; otherwise installed into a
# venv (.venv-device, seeing the system packages) from the wheels in .whl/ when present, else from the package index.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
TOTAL=${DEVICE_CHECK_SECONDS:-350}
left() { echo $(( TOTAL - SECONDS )); }
cap() { local want=$1 l; l=$(left); (( l < want )) && want=$l; (( want < 1 )) && want=1; echo "$want"; }
step() { echo "== $(date +%T) [$SECONDS s] $*"; }

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
need='import torch, torchvision, timm, yacs, cv2, torchcodec, PIL, tqdm, tensorboard, safetensors'
if ! "$PY" -c "$need" 2>/dev/null; then
    step "installing packages"
    "$PY" -m venv --system-site-packages .venv-device && PY=.venv-device/bin/python
    if compgen -G ".whl/*.whl" >/dev/null; then
        timeout "$(cap 120)" "$PY" -m pip install -q --no-index --find-links .whl -r requirements.txt \
            || timeout "$(cap 120)" "$PY" -m pip install -q --no-index --find-links .whl .whl/*.whl
    fi
    "$PY" -c "$need" 2>/dev/null || timeout "$(cap 180)" "$PY" -m pip install -q -r requirements.txt
    "$PY" -c "$need" || { echo "packages missing; stopping"; exit 2; }
fi

step "environment"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUT/env.json" <<'PYEOF'
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, indent=1))
PYEOF
cat "$OUT/env.json"

step "CUDA tests"
timeout "$(cap 100)" "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --durations=0 \
    --junitxml="$OUT/pytest_cuda.xml" > "$OUT/pytest_cuda.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest_cuda.txt"
tail -n 15 "$OUT/pytest_cuda.txt"

# Most important first; each section writes its own file, so a section cut short loses only itself.
for section in cuda:150 eval:45 epoch:90; do
    name=${section%%:*}
    step "benchmark section $name"
    timeout "$(cap "${section##*:}")" "$PY" benchmarks/run.py --only "$name" --output "$OUT/results_$name.json" \
        > "$OUT/bench_$name.txt" 2>&1
    echo "exit $?" >> "$OUT/bench_$name.txt"
    grep -v " INFO " "$OUT/bench_$name.txt" | tail -n 12
done

step "summary"
"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged = {}
for name in ("cuda", "eval", "epoch"):
    f = out / f"results_{name}.json"
    if f.exists():
        data = json.loads(f.read_text())
        merged.setdefault("machine", data.get("machine"))
        if name in data:
            merged[name] = data[name]
(out / "results.json").write_text(json.dumps(merged, indent=2))
print("sections measured:", [k for k in merged if k != "machine"])
for name in ("cuda", "eval", "epoch"):
    text = out / f"bench_{name}.txt"
    if text.exists():
        print("\n".join(l for l in text.read_text().splitlines() if l.startswith(("train step", "evaluation", "epoch "))))
PYEOF
step "done in $SECONDS s; files in $OUT"
