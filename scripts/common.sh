# Shared by scripts/reproduce_*.sh: options, and a queue of runs executed N at a time.
# Finished runs are skipped (--skip_finished), so the scripts can be re-run and share the baseline; a
# skipped run says so ("[skipped, ...]"), and runs go to runs/ (git-ignored) unless --results says
# otherwise, so the committed runs in results/ never stand in for yours.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # the calling script, wherever it was called from
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {  # the calling script's header comment, then the options every reproduce script takes
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$SELF"
  cat <<EOF

usage: $0 [--seeds "0 1 2"] [--device auto|cpu|cuda] [--jobs 4] [--results runs] [--print]
          [-- extra flags for every run]
  --seeds "S ..."   seeds to run, each row once per seed (default "0 1 2")
  --device D        auto, cpu, cuda or cuda:N (default auto)
  --jobs N          runs at once (default 4)
  --results DIR     folder the run folders go to, as <DIR>/<task>/<run>/ (default runs, git-ignored);
                    --results results writes the committed results/ (also: --results_dir)
  --print           print the runs' commands, one per line, instead of running them
                    (the input of scripts/run_commands.py; scripts/run_on_gpu.sh uses it)
  -- FLAGS          passed to every run, e.g. -- --max_steps 200 for a smoke run
  -h, --help        this text
A run whose folder already holds a finished run is skipped, and says so: pass another --results for a
fresh set. Each run's output goes to <DIR>/logs/<n>.log.
EOF
}

needs_value() {  # option, number of arguments left
  if [ "$2" -lt 2 ]; then echo "$(basename "$0"): $1 needs a value (see --help)" >&2; exit 2; fi
}

SEEDS="0 1 2"; DEVICE="auto"; JOBS=4; RESULTS="runs"; EXTRA=(); PRINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --seeds) needs_value "$1" $#; SEEDS="$2"; shift 2 ;;
    --device) needs_value "$1" $#; DEVICE="$2"; shift 2 ;;
    --jobs) needs_value "$1" $#; JOBS="$2"; shift 2 ;;
    --results|--results_dir) needs_value "$1" $#; RESULTS="$2"; shift 2 ;;
    --print) PRINT=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "$(basename "$0"): unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ $JOBS =~ ^[1-9][0-9]*$ ]]; then echo "$(basename "$0"): --jobs must be a whole number >= 1, got '$JOBS'" >&2; exit 2; fi
if [ -z "${SEEDS// /}" ]; then echo "$(basename "$0"): --seeds is empty" >&2; exit 2; fi
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
    echo "$(basename "$0"): ${#QUEUE[@]} runs into $RESULTS/ ($JOBS at a time; logs in $RESULTS/logs/)"
    printf '%s\n' "${QUEUE[@]}" | "$PYTHON" scripts/run_commands.py --jobs "$JOBS" --logdir "$RESULTS/logs"
  fi
}
