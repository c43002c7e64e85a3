#!/usr/bin/env bash
# Continuous sitting, command 1 of 2: all 42 table runs at once, started in a process session of their
# own (setsid), which the device machine lets outlive the command while it stays warm; this command
# watches it until just before its own time limit. Command 2 (issued at once) waits for the end.
#   bash .devdata/sit1.sh [DEADLINE_S=1100] [WATCH_S=560]
set -o pipefail
mkdir -p /tmp/site && tar xzf .whl/rdkit-*.tgz -C /tmp/site || exit 1  # RDKit for QM9 (not on the image)
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$(cat .devdata/commit) \
       GROKFAST_DATA_DIR=$PWD/.devdata/data
nvidia-smi -L; python3 -c 'import torch, rdkit; print(torch.__version__, torch.cuda.get_device_name(), rdkit.__version__)'
# QM9's molecule builder with the carried RDKit, into a scratch cache (the runs build their own): a
# broken RDKit stops here, not 9 runs into the sitting
GROKFAST_CACHE_DIR=/tmp/preflight python3 -c 'from repro.data.qm9 import load_qm9; print("qm9 preflight:", len(load_qm9(max_molecules=100)), "graphs")' || exit 1
rm -rf runs/all runs/sitting.*; mkdir -p runs
setsid bash -c "scripts/run_on_gpu.sh --jobs 42 --deadline ${1:-1100} --results runs/all >runs/sitting.log 2>&1;
                echo \$? >runs/sitting.rc" </dev/null >/dev/null 2>&1 &
t0=$(date +%s)
while [ ! -f runs/sitting.rc ] && [ $(( $(date +%s) - t0 )) -lt ${2:-560} ]; do sleep 10; done
echo "watched $(( $(date +%s) - t0 )) s; finished runs: $(find runs/all -name summary.json | wc -l)"
grep -l -i error runs/all/logs/* 2>/dev/null | head; tail -5 runs/sitting.log
