#!/usr/bin/env bash
# Continuous sitting, command 2 of 2: wait for the sitting started by command 1 (same warm machine; call
# it with nothing carried, so .devdata/ and runs/ stay as they are), return its run folders, then run the
# CUDA-only tests in the time left.
#   bash .devdata/sit2.sh [LIMIT_S=585]
set -o pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 GROKFAST_DATA_DIR=$PWD/.devdata/data
t0=$(date +%s); limit=${1:-585}
while [ ! -f runs/sitting.rc ] && [ $(( $(date +%s) - t0 )) -lt $(( limit - 60 )) ]; do sleep 5; done
echo "sitting rc: $(cat runs/sitting.rc 2>/dev/null || echo 'still running')"; tail -30 runs/sitting.log
cp runs/sitting.log $OUT/
for d in runs/all/*/; do  # one tarball per folder: a file that comes back may hold at most 16 MiB
  tar czf $OUT/runs_$(basename $d).tgz --exclude='checkpoint*' $d
done
grep -l '"stopped": "interrupted' runs/all/*/*/summary.json | head
left=$(( limit - ($(date +%s) - t0) ))
echo "time left for tests: $left s"
if [ -f runs/sitting.rc ] && [ $left -gt 40 ]; then
  timeout $left python3 -m pytest -q -rs $(cat .devdata/cuda_tests) 2>&1 | tee $OUT/cuda_tests.txt | tail -30
fi
