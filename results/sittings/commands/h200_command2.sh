#!/usr/bin/env bash
# sitting, command 2: resume the cut runs, then the CUDA-only tests in the time left
set -o pipefail
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$(cat .devdata/commit) GROKFAST_DATA_DIR=$PWD/.devdata/data
t0=$(date +%s)
scripts/run_on_gpu.sh --jobs 42 --deadline ${1:-520} --results runs/all 2>&1 | tail -40
tar czf $OUT/runs2.tgz --exclude='checkpoint*' runs/all
grep -l '"stopped": "interrupted' runs/all/*/*/summary.json | head
left=$(( 585 - ($(date +%s) - t0) ))
echo "time left for tests: $left s"
if [ $left -gt 30 ]; then
  timeout $left python3 -m pytest -q -rs $(cat .devdata/cuda_tests) 2>&1 | tee $OUT/cuda_tests.txt | tail -30
fi
