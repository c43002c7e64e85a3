#!/usr/bin/env bash
# Same machine, all 42 runs ~100 s each: A = as committed; B = IMDb without its per-step validation batch
# (evaluates only on its whole-split grid): an upper bound on fusing that forward into the next step's.
rm -rf runs/pA runs/pB
bash .devdata/probe_crowd.sh ${1:-100} A
cp repro/tasks/imdb.py /tmp/imdb.py
python3 - <<'PY'
p = "repro/tasks/imdb.py"; s = open(p).read()
old = "        return True  # the reference's random validation batch is taken after every update"
assert old in s; open(p, "w").write(s.replace(old, "        return self.is_grid_step(step)"))
PY
bash .devdata/probe_crowd.sh ${1:-100} B
cp /tmp/imdb.py repro/tasks/imdb.py
