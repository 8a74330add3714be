#!/usr/bin/env bash
# GPU check of train_asgan.py: the full-size README-command config for STEPS steps with engine=deepspeed (fp16
# autocast with dynamic loss scaling) and engine=torch (AMP fp16 + GradScaler), on synthetic HuBERT-like data
# written here. Prints steps/s after warm-up (mean s/b of the stdout lines from step 100 on) and the peak
# reserved GPU memory of each run.
# Usage (from the repo root): bench/gpu_check.sh [STEPS=201] [OUT=$(mktemp -d)]
# Packages the machine lacks (deepspeed, omegaconf, soundfile ...) can be put on PYTHONPATH beforehand.
set -euo pipefail
set -f  # the overrides hold [..] lists: no globbing
STEPS=${1:-201}
OUT=${2:-$(mktemp -d)}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

$PY - "$OUT/data" <<'EOF'
import sys, torch
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
for k in range(2000):  # 1-s SC09 clips give 50 frames of 768 HuBERT features
    torch.save((0.3 * torch.randn(50, 768, generator=g)).half(), out / f'{k:05d}.pt')
EOF

README=$($PY -c "from bench.bench_train import README_COMMAND; print(' '.join(README_COMMAND))")
$PY -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__)"
for ENGINE in deepspeed torch; do
    START=$(date +%s.%N)
    # shellcheck disable=SC2086
    $PY train_asgan.py $README engine=$ENGINE train_root="$OUT/data" checkpoint_path="$OUT/$ENGINE" \
        max_steps="$STEPS" stdout_interval=50 summary_interval=50 checkpoint_interval=1000000 \
        validation_interval=1000000 2>"$OUT/$ENGINE.err" | tee "$OUT/$ENGINE.log" || { tail -30 "$OUT/$ENGINE.err"; exit 1; }
    END=$(date +%s.%N)
    $PY - "$OUT/$ENGINE.log" "$ENGINE" "$START" "$END" <<'EOF'
import re, sys
lines = [l for l in open(sys.argv[1]) if l.startswith('Steps: ')]
rows = [(int(re.search(r'Steps: (\d+)', l)[1]), float(re.search(r's/b: ([\d.]+)', l)[1]),
         float(re.search(r'mem: ([\d.]+)', l)[1])) for l in lines]
warm = [sb for step, sb, _ in rows if step >= 100] or [rows[-1][1]]
print(f'{sys.argv[2]:9s}: {1 / (sum(warm) / len(warm)):6.2f} steps/s after warm-up, peak reserved GPU memory '
      f'{max(m for *_, m in rows):.2f} GB, whole run incl. start-up {float(sys.argv[4]) - float(sys.argv[3]):.0f} s')
EOF
done
