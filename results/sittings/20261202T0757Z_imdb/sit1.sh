#!/usr/bin/env bash
# Engine-restructure GPU check, command 1: solo speed before (730aace) and after (the commit in
# .devdata/commit, a clean export), then IMDb's table (9 runs) started in a process session of its own.
set -o pipefail
export PYTHONUNBUFFERED=1 GROKFAST_DATA_DIR=$PWD/.devdata/data GROKFAST_CACHE_DIR=/tmp/gcache
nvidia-smi -L; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
mkdir -p /tmp/speed
for rep in 1 2; do for v in before after; do
  (cd .devdata/$v && export GROKFAST_GIT_COMMIT=$([ $v = before ] && echo 730aace || cat ../commit) &&
   python3 main.py --config configs/modular/ema.yaml --max_steps 3000 --device cuda --progress false \
     --out_dir /tmp/speed/$v$rep/modular > /tmp/speed/$v$rep-modular.log 2>&1;
   python3 main_imdb.py --config configs/imdb/grokfast.yaml --max_steps 300 --device cuda --progress false \
     --out_dir /tmp/speed/$v$rep/imdb > /tmp/speed/$v$rep-imdb.log 2>&1)
done; done
python3 - <<'PY'
import json, glob
for p in sorted(glob.glob("/tmp/speed/*/*/summary.json")):
    s = json.load(open(p))
    print(p.split("/")[3], p.split("/")[4], s["steps"], "train_step_ms=%.3f" % s["train_step_ms"],
          "eval_ms=%.3f" % (s.get("eval_ms") or 0), "wall_per_step_ms=%.3f" % s["wall_per_step_ms"], s["device"])
PY
tar czf $OUT/speed.tgz -C /tmp speed
cd .devdata/after && export GROKFAST_GIT_COMMIT=$(cat ../commit)
setsid nohup scripts/run_on_gpu.sh --tables imdb --jobs 9 --results /tmp/sit > /tmp/sit.log 2>&1 < /dev/null &
t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt ${1:-420} ]; do
  n=$(ls /tmp/sit/imdb/*/summary.json 2>/dev/null | wc -l); [ "$n" -ge 9 ] && break; sleep 10
done
tail -5 /tmp/sit.log; ls /tmp/sit/imdb/*/summary.json 2>/dev/null | wc -l
tail -n1 /tmp/sit/imdb/*/metrics.jsonl | cut -c1-80
