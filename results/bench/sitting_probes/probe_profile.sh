export PYTHONUNBUFFERED=1 GROKFAST_GIT_COMMIT=probe GROKFAST_DATA_DIR=$PWD/.devdata/data
python3 .devdata/prof4.py 2>&1 | grep -v Warning
for c in false true; do
  python3 main.py --config configs/modular/wd_ma.yaml --device cuda --max_steps 3000 --progress false --out_dir runs/cmp_$c --compile $c | tail -1
done
