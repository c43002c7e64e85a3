#!/usr/bin/env bash
# All five tables, then the summary tables and figures. Same options as each reproduce_<table>.sh.
set -euo pipefail
here="$(dirname "$0")"
for table in modular_ema modular_ma mnist imdb qm9; do
  "$here/reproduce_$table.sh" "$@"
done
python3 "$here/summarize.py"
