#!/usr/bin/env bash
# Same machine, all 42 runs ~100 s each: A = as committed; B = IMDb without its whole-split grid (eval_every 10000:
# only steps 1 and the last), an upper bound on what dropping the grid's training split could give.
rm -rf runs/pA runs/pB
bash .devdata/probe_crowd.sh ${1:-100} A
cp -r configs/imdb /tmp/imdb_cfg
for f in configs/imdb/*.yaml; do echo "eval_every: 10000" >> $f; done
bash .devdata/probe_crowd.sh ${1:-100} B
rm -rf configs/imdb; cp -r /tmp/imdb_cfg configs/imdb
