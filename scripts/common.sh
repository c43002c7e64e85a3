# Shared by scripts/reproduce_*.sh: options, and a queue of runs executed N at a time.
#   scripts/reproduce_<table>.sh [--seeds "0 1 2"] [--device cuda] [--jobs 4] [--results results]
#                                [--print] [-- extra flags for every run]
# --print lists the runs instead (one command per line, for scripts/run_commands.py).
# Finished runs are skipped (--skip_finished), so the scripts can be re-run and share the baseline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SEEDS="0 1 2"; DEVICE="auto"; JOBS=4; RESULTS="results"; EXTRA=(); PRINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --print) PRINT=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option: $1 (use --seeds, --device, --jobs, --results, -- extra flags)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
QUEUE=()
COMMON="--device $DEVICE --results_dir $RESULTS --progress false --skip_finished true ${EXTRA[*]:-}"

queue() {  # queue SCRIPT CONFIG LABEL SEED [flags...]
  local script="$1" config="$2" label="$3" seed="$4"; shift 4
  QUEUE+=("$PYTHON $script --config $config --label $label --seed $seed $COMMON $*")
}

run_queue() {
  if [ "$PRINT" = 1 ]; then
    printf '%s\n' "${QUEUE[@]}"
  else
    printf '%s\n' "${QUEUE[@]}" | "$PYTHON" scripts/run_commands.py --jobs "$JOBS" --logdir "$RESULTS/logs"
  fi
}
