#!/usr/bin/env bash
# All 42 sitting runs at once for ~$1 s (default 100), twice: A = host spins (HEAD code: no run-ahead bound,
# torch.cuda.synchronize), B = the working tree (blocking-sync marks, host <= 32 steps ahead). Per run group:
# steady ms/step (from 30 s on) and vmstat CPU.
export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=probe GROKFAST_DATA_DIR=$PWD/.devdata/data
D=${1:-100}
mkdir -p .devdata/new && cp repro/timing.py repro/engine.py .devdata/new/
for v in A B; do
  if [ $v = A ]; then cp .devdata/old/*.py repro/; else cp .devdata/new/*.py repro/; fi
  grep -c RUN_AHEAD repro/engine.py
  vmstat 2 > $OUT/vmstat_$v.txt & VM=$!
  scripts/run_on_gpu.sh --results runs/p$v --jobs 42 --deadline $D > $OUT/run_$v.txt 2>&1
  kill $VM
  python3 - runs/p$v $v $OUT/vmstat_$v.txt <<'PY'
import glob, json, sys, re
groups = {}
for f in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    rows = [(r["step"], r["elapsed_s"]) for r in map(json.loads, open(f)) if "elapsed_s" in r]
    name = f.split("/")[-2]
    g = ("controls" if "wd_ma" in name and "mul97" in name else "mod97" if "mul97" in name
         else name.split("_")[0])
    later = [r for r in rows if r[1] >= 30]
    if len(later) < 2: groups.setdefault(g, []).append((float("nan"), rows[-1][0] if rows else 0)); continue
    a, b = later[0], later[-1]
    groups.setdefault(g, []).append((1000 * (b[1] - a[1]) / max(1, b[0] - a[0]), b[0]))
for g, v in groups.items():
    ms = [x for x, _ in v]; st = [s for _, s in v]
    print(f"{sys.argv[2]} {g:9s} n={len(v)} ms/step {min(ms):8.3f}-{max(ms):8.3f}  last step {min(st)}-{max(st)}")
lines = [l.split() for l in open(sys.argv[3]) if re.match(r"\s*\d", l)]
cs = [int(l[11]) for l in lines[10:-2]]; idle = [int(l[14]) for l in lines[10:-2]]; us = [int(l[12]) for l in lines[10:-2]]
if cs: print(f"{sys.argv[2]} vmstat from 20 s: cs/s {sum(cs)//len(cs)}, user {sum(us)/len(us):.0f}%, idle {sum(idle)/len(idle):.0f}%")
PY
done
cp .devdata/new/*.py repro/
