#!/usr/bin/env bash
# command 2: wait for IMDb's table, return its run folders, run the CUDA-only tests
set -o pipefail
t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt ${1:-400} ]; do
  n=$(ls /tmp/sit/imdb/*/summary.json 2>/dev/null | wc -l); [ "$n" -ge 9 ] && break; sleep 5
done
cat /tmp/sit.log | tail -20
tar czf $OUT/imdb.tgz --exclude='checkpoint*' -C /tmp sit
cd .devdata/after && export GROKFAST_DATA_DIR=$PWD/../data GROKFAST_CACHE_DIR=/tmp/gcache2
timeout 240 python3 -m pytest -q -rs tests/test_grokfast.py tests/test_main_modular.py::test_cuda_graphs_give_the_eager_runs_metrics \
  tests/test_resume.py::test_a_resumed_runs_peak_gpu_memory_equals_an_uninterrupted_ones \
  tests/test_imdb_task.py::test_a_resumed_imdb_runs_peak_gpu_memory_equals_an_uninterrupted_ones 2>&1 | tee $OUT/cuda_tests.txt | tail -15
