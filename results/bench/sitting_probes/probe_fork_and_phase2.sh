#!/usr/bin/env bash
# 1. CUDA tests of the new code; 2. start-up of all 42 sitting commands through the forking runner;
# 3. the sitting's second phase (9 IMDb + 3 mod-97 wd-0.01 controls) at IMDb SM limits 25% and 8%.
export PYTHONUNBUFFERED=1 GROKFAST_DATA_DIR=$PWD/.devdata/data GROKFAST_GIT_COMMIT=probe
exec > >(tee $OUT/probe2.txt) 2>&1
now() { date +%s.%N; }
since() { python3 -c "print(round($(now)-$1,1))"; }
T=$(now); python3 -m pytest -q -p no:cacheprovider tests/test_main_modular.py tests/test_resume.py tests/test_grokfast.py tests/test_timing.py -k "cuda or peak" 2>&1 | tail -4; echo "cuda tests $(since $T) s"
nvidia-cuda-mps-control -d && echo "MPS on"
cmds=$(for t in modular_ema modular_ma mnist imdb qm9; do scripts/reproduce_$t.sh --print --seeds "0 1 2" --device cuda --results /tmp/p42; done | awk '!seen[$0]++')
vmstat 1 > $OUT/vmstat_fork.txt & VM=$!
T=$(now); printf '%s\n' "$cmds" | sed 's/$/ --max_steps 30/' | python3 scripts/run_commands.py --jobs 42 --logdir /tmp/p42/logs > /tmp/p42.txt
echo "42 commands x 30 steps through run_commands.py: $(since $T) s; $(grep -c '^\[ok' /tmp/p42.txt) ok"; kill $VM
grep -v '^\[ok' /tmp/p42.txt | head -3
grep -h started_at /tmp/p42/*/*/header.json | sort | uniq -c | sed -n '1p;$p'; date -u -d @${T%.*} +%H:%M:%S
phase2() {  # $1 = IMDb SM percentage
  { scripts/reproduce_imdb.sh --print --seeds "0 1 2" --device cuda --results runs/ph2_$1 \
      | sed "s/^/env CUDA_MPS_CLIENT_PRIORITY=1 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$1 /"
    scripts/reproduce_modular_ma.sh --print --seeds "0 1 2" --device cuda --results runs/ph2_$1 | grep wd_ma; } \
    | python3 scripts/run_commands.py --jobs 12 --deadline 75 --logdir runs/ph2_$1/logs > /dev/null
  python3 - runs/ph2_$1 $1 <<'PY'
import glob, json, sys
rates = {}
for f in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    rows = [json.loads(l) for l in open(f)]
    rows = [(r["step"], r["elapsed_s"]) for r in rows if "elapsed_s" in r]
    a = next(r for r in rows if r[1] >= 20); b = rows[-1]
    rates.setdefault(f.split("/")[2], []).append(1000 * (b[1] - a[1]) / (b[0] - a[0]))
for task, v in rates.items():
    print(f"IMDb SM {sys.argv[2]}%: {task} ms/step from 20 s on: " + " ".join(f"{x:.2f}" for x in v))
PY
}
phase2 25
phase2 8
echo quit | nvidia-cuda-mps-control
