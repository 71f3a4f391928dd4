#!/usr/bin/env bash
# The GPU check, in one call on a machine with a CUDA GPU (run from the repository root):
#   1. the flow's and the module's tests, whose device-dependent ones then run on CUDA too;
#   2. the step benchmark on AWA2's shape, schedule=paper (K = 10, H = 1024), fp32 and bf16-mixed;
#   3. a full schedule=paper training run on the AWA2 stand-in, timed.
# Everything it prints is also written under $OUT (default logs/gpu_check). ACCELERATOR=cpu with
# EXTRA="debug=fast" and STEPS=3 runs the same script on a CPU in a minute (tests/test_bench.py does).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-logs/gpu_check}
accelerator=${ACCELERATOR:-gpu}
steps=${STEPS:-100}
extra=${EXTRA:-}
mkdir -p "$out"
export WANDB_MODE=disabled

python - <<'PY' | tee "$out/device.txt"
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpu}, python {platform.python_version()}")
PY
if [[ $accelerator == gpu ]]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: ACCELERATOR=cpu runs the CPU version')"
fi

python -m pytest -q -p no:cacheprovider tests/test_flow.py tests/test_module.py 2>&1 | tee "$out/tests.txt"

for precision in 32-true bf16-mixed; do
  # shellcheck disable=SC2086
  python -m izf.bench trainer.accelerator="$accelerator" trainer.precision="$precision" $extra --steps "$steps" \
    2>&1 | tee "$out/bench_$precision.txt"
done

start=$(date +%s)
# shellcheck disable=SC2086
python train.py dataset=stand_in schedule=paper trainer.accelerator="$accelerator" logger=csv $extra \
  hydra.run.dir="$out/paper_run" 2>&1 | tail -n 25 | tee "$out/paper_run.txt"
echo "schedule=paper run on the stand-in: $(( $(date +%s) - start )) s wall" | tee -a "$out/paper_run.txt"
