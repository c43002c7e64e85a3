#!/usr/bin/env bash
# Start-up anatomy: where do the ~36 s before the first header go? Prints to stdout and $OUT/startup.txt
export PYTHONUNBUFFERED=1 GROKFAST_DATA_DIR=$PWD/.devdata/data GROKFAST_GIT_COMMIT=probe
exec > >(tee $OUT/startup.txt) 2>&1
nvidia-smi --query-gpu=name,persistence_mode,pstate --format=csv
nproc; cat /proc/loadavg
cat > /tmp/st.py <<'PY'
import time, os, sys
t0 = time.time()
import torch
t1 = time.time()
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t2 = time.time()
import torch_geometric
t3 = time.time()
print(f"import_torch={t1-t0:.2f} cuda_init={t2-t1:.2f} import_pyg={t3-t2:.2f} t_end={t3:.2f}")
PY
now() { date +%s.%N; }
for k in 1 2; do T=$(now); python3 /tmp/st.py; echo "solo no-MPS #$k wall $(python3 -c "print(round($(now)-$T,2))")"; done
T=$(now); python3 main.py --device cuda --max_steps 20 --progress false --results_dir /tmp/p0 >/dev/null 2>&1; echo "main.py solo 20 steps wall $(python3 -c "print(round($(now)-$T,2))")"
nvidia-cuda-mps-control -d && echo "MPS started"
T=$(now); python3 /tmp/st.py; echo "solo MPS wall $(python3 -c "print(round($(now)-$T,2))")"
T=$(now); python3 /tmp/st.py; echo "solo MPS #2 wall $(python3 -c "print(round($(now)-$T,2))")"
vmstat 1 > $OUT/vmstat42.txt & VM=$!
T=$(now); for i in $(seq 42); do python3 /tmp/st.py > /tmp/st_$i.txt 2>&1 & done
while pgrep -f /tmp/st.py >/dev/null; do sleep 0.2; done
echo "42 x st.py under MPS: wall $(python3 -c "print(round($(now)-$T,2))") start=$T"
cat /tmp/st_*.txt | sort -t= -k5 | awk 'NR==1||NR%7==0'
python3 - <<'PY'
import glob,re
rows=[dict(re.findall(r"(\w+)=([\d.]+)",open(f).read())) for f in glob.glob('/tmp/st_*.txt')]
rows=[{k:float(v) for k,v in r.items()} for r in rows if r]
for k in ("import_torch","cuda_init","import_pyg"):
    v=sorted(r[k] for r in rows); print(k, "min", v[0], "median", v[len(v)//2], "max", v[-1])
PY
kill $VM
# the real sitting's 42 commands, 30 steps each
cmds=$(for t in modular_ema modular_ma mnist imdb qm9; do scripts/reproduce_$t.sh --print --seeds "0 1 2" --device cuda --results /tmp/p42; done | awk '!seen[$0]++')
vmstat 1 > $OUT/vmstat_real.txt & VM=$!
T=$(now)
pids=""; i=0; while IFS= read -r c; do i=$((i+1)); ( s=$(now); $c --max_steps 30 > /tmp/r_$i.log 2>&1; echo "$(python3 -c "print(round($(now)-$T,2), round($(now)-$s,2))") ${c:8:40}" ) & pids+=" $!"; done <<< "$cmds"
wait $pids
echo "42 real commands x 30 steps: wall $(python3 -c "print(round($(now)-$T,2))")"
kill $VM
grep -h '"wall_s"' /tmp/p42/*/*/summary.json | sort | awk 'NR==1||NR%10==0'
grep -h started_at /tmp/p42/*/*/header.json | sort | uniq -c
date -u -d @${T%.*} +%H:%M:%S
echo quit | nvidia-cuda-mps-control
