#!/usr/bin/env bash
# sitting, command 1: all 42 table runs at once, cut at the deadline (checkpoints stay on the machine)
set -o pipefail
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$(cat .devdata/commit) GROKFAST_DATA_DIR=$PWD/.devdata/data
rm -rf runs/all
nvidia-smi -L; command -v nvidia-cuda-mps-control; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
scripts/run_on_gpu.sh --jobs 42 --deadline ${1:-555} --results runs/all 2>&1 | tail -40
tar czf $OUT/runs1.tgz --exclude='checkpoint*' runs/all
ls runs/all/*/ | head -3; find runs/all -name summary.json | wc -l
