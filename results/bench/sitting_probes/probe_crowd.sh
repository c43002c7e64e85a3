#!/usr/bin/env bash
# All 42 sitting runs at once for ~$1 s with the working tree; per run group steady ms/step from 30 s on.
V=${2:-C}; export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=probe GROKFAST_DATA_DIR=$PWD/.devdata/data
scripts/run_on_gpu.sh --results runs/p$V --jobs 42 --deadline ${1:-100} > $OUT/run_$V.txt 2>&1
head -4 $OUT/run_$V.txt | cut -c1-150
grep -h started_at runs/p$V/*/*/header.json | sort | uniq -c | head -3
python3 - runs/p$V $V <<'PY'
import glob, json, sys
groups = {}
for f in sorted(glob.glob(sys.argv[1] + "/*/*/metrics.jsonl")):
    rows = [(r["step"], r["elapsed_s"]) for r in map(json.loads, open(f)) if "elapsed_s" in r]
    name = f.split("/")[-2]
    g = ("controls" if "wd_ma" in name and "mul97" in name else "mod97" if "mul97" in name else name.split("_")[0])
    later = [r for r in rows if r[1] >= 30]
    if len(later) < 2: continue
    a, b = later[0], later[-1]
    groups.setdefault(g, []).append((1000 * (b[1] - a[1]) / max(1, b[0] - a[0]), b[0]))
for g, v in groups.items():
    ms = [x for x, _ in v]; st = [s for _, s in v]
    print(f"{sys.argv[2]} {g:9s} n={len(v)} ms/step {min(ms):8.3f}-{max(ms):8.3f}  last step {min(st)}-{max(st)}")
PY
