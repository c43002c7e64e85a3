#!/usr/bin/env bash
# 1) nine IMDb runs at once, each limited to 25% of the SMs (MPS active thread percentage), ~70 s
# 2) the fifteen mod-97 runs at once with the answer-only last block, ~70 s
# 3) all 42 at once, the three mod-97 wd-0.01 controls at normal MPS priority, the rest below normal, ~150 s
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=$1 GROKFAST_DATA_DIR=$PWD/.devdata/data
nvidia-cuda-mps-control -d
rates() {
  python3 - "$1" <<'PY'
import json, sys, glob, os
for m in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    recs = [json.loads(l) for l in open(m)]
    if len(recs) < 3: print("few records", m, len(recs)); continue
    a, b = recs[len(recs) // 3], recs[-1]
    ms = 1000 * (b["elapsed_s"] - a["elapsed_s"]) / max(1, b["step"] - a["step"])
    print(f"{os.path.basename(os.path.dirname(m))[:58]:58s} last_step {b['step']:7d} elapsed {b['elapsed_s']:6.1f} s  steady {ms:8.3f} ms/step")
PY
}
list() { for t in $1; do scripts/reproduce_$t.sh --print --seeds "0 1 2" --device cuda --results $2; done | awk '!seen[$0]++'; }
power() { echo "power W: $(grep ' 100 %' $1 | awk -F', ' '{print $3}' | tr '\n' ' ')"; }

nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw --format=csv,noheader -l 3 > $OUT/smi_1.csv & s=$!
list imdb runs/imdb25 | sed 's#^#env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 #' | scripts/run_commands.sh --jobs 42 --deadline 75 --logdir runs/imdb25/logs >/dev/null 2>&1
kill $s; echo "== imdb, 25% of SMs each"; power $OUT/smi_1.csv; rates runs/imdb25

nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw --format=csv,noheader -l 3 > $OUT/smi_2.csv & s=$!
list "modular_ema modular_ma" runs/mod | scripts/run_commands.sh --jobs 42 --deadline 75 --logdir runs/mod/logs >/dev/null 2>&1
kill $s; echo "== mod-97, answer-only last block"; power $OUT/smi_2.csv; rates runs/mod

nvidia-smi --query-gpu=timestamp,utilization.gpu,power.draw --format=csv,noheader -l 3 > $OUT/smi_3.csv & s=$!
list "modular_ema modular_ma mnist imdb qm9" runs/all | sed -E '/wd_ma\.yaml/!s#^#env CUDA_MPS_CLIENT_PRIORITY=1 #' \
  | scripts/run_commands.sh --jobs 42 --deadline 150 --logdir runs/all/logs >/dev/null 2>&1
kill $s; echo "== all 42, controls first"; power $OUT/smi_3.csv; rates runs/all
echo quit | nvidia-cuda-mps-control
