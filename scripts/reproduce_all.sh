#!/usr/bin/env bash
# All five tables, then their summary: <results>/README.md and <results>/figures/ (scripts/summarize.py
# over the same results folder). Same options as each reproduce_<table>.sh (see below); a table whose
# runs fail does not stop the others, and the script then exits 1.
set -euo pipefail
here="$(dirname "$0")"
RESULTS="runs"; PRINT=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do  # what summarize needs to know; reproduce_<table>.sh checks the rest
  case "${args[i]}" in
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; echo
               "$here/reproduce_modular_ma.sh" --help | sed -n '/^usage:/,$p' | sed "s#[^ ]*reproduce_modular_ma.sh#$0#"
               exit 0 ;;
    --results|--results_dir) RESULTS="${args[i + 1]:-}" ;;
    --print) PRINT=1 ;;
    --) break ;;
  esac
done
failed=0
for table in modular_ema modular_ma mnist imdb qm9; do
  "$here/reproduce_$table.sh" "$@" || { code=$?; [ "$code" = 1 ] || exit "$code"; failed=1; }
done
if [ "$PRINT" = 0 ]; then
  "${PYTHON:-python3}" "$here/summarize.py" --results "$RESULTS"
fi
exit "$failed"
