#!/usr/bin/env bash
# The GPU check (issue 18, benchmarks/gpu/gpu_checks.py: its docstring lists the steps), then the
# tests marked `gpu`/`tensorrt`. Everything lands in $OUT (default artifacts/gpu): gpu_checks.json
# and gpu_checks.md (the results), gpu_checks.log, pytest_gpu.txt, nvidia-smi.txt. Rerunnable in the
# same $OUT.
#
# Needs: a CUDA GPU and `pip install -c constraints.txt -e '.[dev,gpu]'` in a fresh venv (never
# '.[cpu]' and '.[gpu]' together). No network access is needed. Budget: under 10 minutes.
#
#   OUT=/tmp/gpu bash benchmarks/gpu/run_gpu_checks.sh [--model resnet18] [--img-size 128]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-artifacts/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # works without an editable install
export PYTHONUNBUFFERED=1

(nvidia-smi || echo "nvidia-smi not available") > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
  > "$OUT/python-env.txt" 2>&1
"$PY" -m pip list --format=freeze >> "$OUT/python-env.txt" 2>&1 || true

"$PY" benchmarks/gpu/gpu_checks.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_checks.log"
status=${PIPESTATUS[0]}

# The real-GPU tests (they skip without CUDA + tensorrt); FOPT_SLOW is not needed.
timeout 300 "$PY" -m pytest -q -m "gpu or tensorrt" tests -p no:cacheprovider \
  > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest -m 'gpu or tensorrt' exit status: $?" >> "$OUT/pytest_gpu.txt"
tail -3 "$OUT/pytest_gpu.txt"
exit "$status"
