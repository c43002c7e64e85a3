#!/usr/bin/env bash
# Phase 1: all 42 runs at once under MPS for ~150 s, sampling CPU (vmstat) and GPU (nvidia-smi).
# Phase 2: the same, but every run except IMDb and the mod-97 wd-0.01 controls at MPS client priority BELOW_NORMAL.
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$1 GROKFAST_DATA_DIR=$PWD/.devdata/data
nvidia-cuda-mps-control -d
cmds=$(for t in modular_ema modular_ma mnist imdb qm9; do scripts/reproduce_$t.sh --print --seeds "0 1 2" --device cuda --results RES; done | awk '!seen[$0]++')
for phase in p1 p2; do
  vmstat 5 > $OUT/vmstat_$phase.txt & v=$!
  nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw,clocks.sm,memory.used --format=csv -l 5 > $OUT/smi_$phase.csv & s=$!
  (sleep 100; top -b -n1 -w 200 | head -60 > $OUT/top_$phase.txt) &
  if [ $phase = p1 ]; then printf '%s\n' "$cmds" | sed "s#RES#runs/$phase#g"
  else printf '%s\n' "$cmds" | sed "s#RES#runs/$phase#g" | sed -E '/main_imdb|wd_ma\.yaml/!s#^#env CUDA_MPS_CLIENT_PRIORITY=1 #'
  fi > /tmp/cmds_$phase.txt
  head -3 /tmp/cmds_$phase.txt
  t0=$(date +%s)
  scripts/run_commands.sh --jobs 42 --deadline 150 --logdir runs/$phase/logs < /tmp/cmds_$phase.txt > $OUT/runlog_$phase.txt 2>&1
  echo "$phase wall $(( $(date +%s) - t0 )) s"
  kill $v $s
  python3 - runs/$phase <<'PY'
import json, sys, glob, os
rows = []
for m in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    recs = [json.loads(l) for l in open(m)]
    if len(recs) < 3: print("few records", m, len(recs)); continue
    a, b = recs[len(recs) // 3], recs[-1]  # steady state: from a third of the way
    ms = 1000 * (b["elapsed_s"] - a["elapsed_s"]) / max(1, b["step"] - a["step"])
    print(f"{os.path.basename(os.path.dirname(m))[:58]:58s} last_step {b['step']:7d} elapsed {b['elapsed_s']:7.1f} s  steady {ms:8.3f} ms/step")
PY
done
echo quit | nvidia-cuda-mps-control
