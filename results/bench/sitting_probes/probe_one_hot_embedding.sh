#!/usr/bin/env bash
# Same machine: A = old model + old launch order, B = new model (one-hot embedding) + old order, C = both new.
D=${1:-100}
for v in A B C; do
  if [ $v = A ]; then cp .devdata/old/modular.py repro/tasks/; else cp .devdata/new/modular.py repro/tasks/; fi
  if [ $v = C ]; then cp .devdata/new/run_on_gpu.sh scripts/; else cp .devdata/old/run_on_gpu.sh scripts/; fi
  grep -c one_hot repro/tasks/modular.py; grep -c "start first" scripts/run_on_gpu.sh
  bash .devdata/probe_crowd.sh $D $v
done
cp .devdata/new/modular.py repro/tasks/; cp .devdata/new/run_on_gpu.sh scripts/
