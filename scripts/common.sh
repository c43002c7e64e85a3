# Shared by scripts/reproduce_*.sh: options, and a queue of runs executed N at a time.
#   scripts/reproduce_<table>.sh [--seeds "0 1 2"] [--device cuda] [--jobs 4] [--results results] [-- extra flags]
# Finished runs are skipped (--skip_finished), so the scripts can be re-run and share the baseline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SEEDS="0 1 2"; DEVICE="auto"; JOBS=4; RESULTS="results"; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
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
  mkdir -p "$RESULTS"
  printf '%s\n' "${QUEUE[@]}" | xargs -P "$JOBS" -I{} sh -c '{} >/dev/null 2>>"'"$RESULTS"'/reproduce_errors.log" && echo "done: {}" || echo "FAILED ($?): {}"'
}
