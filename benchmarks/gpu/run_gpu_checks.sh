#!/usr/bin/env bash
# Prepared GPU check for `fopt optimize` (issue 5): build FP32, FP16 and INT8 TensorRT engines for one
# small model trained on synthetic data, run them, and compare latency and accuracy with ONNX
# Runtime on the CPU. Then run the tests marked `tensorrt`. Everything lands in $OUT (default
# artifacts/gpu): gpu_checks.json (the results), gpu_checks.log, pytest_tensorrt.txt, nvidia-smi.txt.
#
# Needs: a CUDA GPU, torch with CUDA, tensorrt >= 10, onnxruntime, onnx, onnxconverter-common and
# fopt's other dependencies (pip install -e '.[gpu]'). No network access is needed. Typical run
# time on a data-centre GPU: 2-5 minutes (most of it TensorRT builds and CPU evaluation).
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
timeout 600 "$PY" -m pytest -q -m tensorrt tests/optimize/test_tensorrt.py -p no:cacheprovider \
  > "$OUT/pytest_tensorrt.txt" 2>&1
echo "pytest -m tensorrt exit status: $?" >> "$OUT/pytest_tensorrt.txt"
tail -3 "$OUT/pytest_tensorrt.txt"
exit "$status"
