#!/usr/bin/env bash
# One GPU sitting of the reproduction: the runs of the named tables, all at once, under CUDA MPS when
# the machine has it (these models use a sliver of an H100: with MPS their kernels share the GPU
# instead of taking turns; 8 QM9 runs went 5x faster together than one after another).
#   scripts/run_on_gpu.sh [--tables "imdb qm9"] [--seeds "0 1 2"] [--jobs 16] [--deadline 560] [--results runs]
#                         [--first REGEX] [--sm_limit REGEX=PERCENT] [--compile REGEX]
#                         [--populations [--solo REGEX] [--apart REGEX]]
# --tables: of modular_ema modular_ma mnist imdb qm9 (default all five); --seeds, --results: as for
#   scripts/reproduce_<table>.sh (default results folder runs/, git-ignored; --results results writes
#   the committed one); --jobs: runs at once (default 16); --deadline: seconds until running runs are
#   interrupted with a checkpoint (a re-run resumes them; default 0, none).
# Under MPS, two settings measured on an H100 with all 42 table runs at once (results/bench/sitting_probes/):
# --first: runs whose command matches keep normal MPS priority, all others run below it, so the
#   longest runs (default: the mod-97 wd-0.01 controls, 300,000 steps each; with --populations their
#   population and IMDb's runs) are not the last ones left: 3.4 instead of 9.5 ms per step in the crowd,
#   the others about as fast. They also start first. "" turns it off.
# --sm_limit: runs whose command matches may use at most PERCENT of the SMs (MPS active thread
#   percentage); IMDb's LSTM kernels spread wide, and nine IMDb runs at once went 42.5 instead of 58 ms
#   per step at 25%. "" turns it off.
# --compile: runs whose command matches get --compile true (torch.compile of the task's loss inside the CUDA
#   graphs: fewer, fused kernels per step; each run compiles at its start). Default: none; with
#   --populations every population ('--population ').
# --populations: the mod-97 and MNIST runs that can share a population train as one
#   (scripts/stack_commands.py; each member writes its solo run's folder); IMDb and QM9 stay solo runs.
#   With its defaults (mod-97 as five populations of 3, populations compiled, the controls' population and
#   IMDb first) and --jobs 42 the 42-run set took 653 s on a fresh H200 instead of 893 s solo
#   (results/sittings/20261203T110629Z_populations).
# --solo: with --populations, runs whose command matches stay solo processes. Default: none.
# --apart: with --populations, runs whose command matches stack only with those whose match is the same text:
#   a population's step does all its members' work, so the 300,000-step controls get one of their own; the
#   mod-97 baselines and Grokfast-EMA runs get one each too, so that every mod-97 population has 3 members:
#   a compiled stack shrinks only by halves and never below two rows, so a population of 3 keeps its three
#   rows and none compiles again mid-sitting
#   (default 'wd_ma\.yaml|modular/(baseline|ema)\.yaml').
# Writes RESULTS/sittings/<start time>.json: the tables, the runs, the settings, the wall time, the device.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$SELF"; }
needs_value() {  # option, number of arguments left
  if [ "$2" -lt 2 ]; then echo "run_on_gpu.sh: $1 needs a value (see --help)" >&2; exit 2; fi
}
# tables with the longest runs first: their runs start first
TABLES="imdb modular_ma modular_ema qm9 mnist"; SEEDS="0 1 2"; JOBS=16; DEADLINE=0; RESULTS="runs"
FIRST=default; SM_LIMIT='main_imdb\.py=25'; COMPILE=default; POPULATIONS=0; SOLO=""; APART=default
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --tables) needs_value "$1" $#; TABLES="$2"; shift 2 ;;
    --seeds) needs_value "$1" $#; SEEDS="$2"; shift 2 ;;
    --jobs) needs_value "$1" $#; JOBS="$2"; shift 2 ;;
    --deadline) needs_value "$1" $#; DEADLINE="$2"; shift 2 ;;
    --results|--results_dir) needs_value "$1" $#; RESULTS="$2"; shift 2 ;;
    --first) needs_value "$1" $#; FIRST="$2"; shift 2 ;;
    --sm_limit) needs_value "$1" $#; SM_LIMIT="$2"; shift 2 ;;
    --compile) needs_value "$1" $#; COMPILE="$2"; shift 2 ;;
    --populations) POPULATIONS=1; shift ;;
    --solo) needs_value "$1" $#; SOLO="$2"; shift 2 ;;
    --apart) needs_value "$1" $#; APART="$2"; shift 2 ;;
    *) echo "run_on_gpu.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$POPULATIONS" = 1 ]; then  # the layout measured fastest (see --populations)
  [ "$FIRST" != default ] || FIRST='wd_ma|main_imdb\.py'
  [ "$COMPILE" != default ] || COMPILE='--population '
  [ "$APART" != default ] || APART='wd_ma\.yaml|modular/(baseline|ema)\.yaml'
else
  [ "$FIRST" != default ] || FIRST='wd_ma\.yaml'
  [ "$COMPILE" != default ] || COMPILE=""
  [ "$APART" = default ] || { echo "run_on_gpu.sh: --apart needs --populations" >&2; exit 2; }
fi
for t in $TABLES; do
  if [ ! -f "scripts/reproduce_$t.sh" ]; then
    echo "run_on_gpu.sh: no table '$t' (tables: modular_ema modular_ma mnist imdb qm9)" >&2; exit 2
  fi
done
if ! [[ $DEADLINE =~ ^[0-9]+$ ]]; then echo "run_on_gpu.sh: --deadline must be whole seconds, got '$DEADLINE'" >&2; exit 2; fi
# QM9 builds its graphs with RDKit: without it its runs stop at start, which a 15-minute sitting finds
# out too late (an H200 machine lacked it; carry its wheel there). Its package metadata too: run headers
# read RDKit's version from it (a trimmed copy without it once left QM9 headers without the version).
if [[ " $TABLES " == *" qm9 "* ]] &&
   ! "${PYTHON:-python3}" -c "import rdkit, importlib.metadata as m; m.version('rdkit')" 2>/dev/null; then
  echo "run_on_gpu.sh: the qm9 table needs RDKit with its package metadata (dist-info), which" \
       "${PYTHON:-python3} cannot find: pip install rdkit" >&2
  exit 2
fi
commands=$(for t in $TABLES; do scripts/reproduce_$t.sh --print --seeds "$SEEDS" --device cuda --results "$RESULTS"; done \
           | awk '!seen[$0]++')  # the mod-97 baseline belongs to two tables: run it once
if [ "$POPULATIONS" = 1 ]; then
  commands=$("${PYTHON:-python3}" scripts/stack_commands.py --dir "$RESULTS/populations" --keep_solo "$SOLO" \
             --apart "$APART" <<<"$commands")
fi
mps=0; started_mps=0  # an MPS daemon already running (another sitting's) is used, and left to its owner
if command -v nvidia-cuda-mps-control >/dev/null; then
  if pgrep -x nvidia-cuda-mps >/dev/null; then mps=1
  elif nvidia-cuda-mps-control -d 2>/dev/null; then mps=1; started_mps=1; fi
fi
launch=$(printf '%s\n' "$commands" | while IFS= read -r cmd; do  # MPS settings: environment variables of a run
  if [ -n "$COMPILE" ] && [[ $cmd =~ $COMPILE ]]; then cmd+=" --compile true"; fi
  vars=""
  if [ "$mps" = 1 ]; then
    if [ -n "$FIRST" ] && ! [[ $cmd =~ $FIRST ]]; then vars+=" CUDA_MPS_CLIENT_PRIORITY=1"; fi
    if [ -n "$SM_LIMIT" ] && [[ $cmd =~ ${SM_LIMIT%=*} ]]; then vars+=" CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${SM_LIMIT##*=}"; fi
  fi
  echo "${vars:+env$vars }$cmd"
done)
if [ -n "$FIRST" ]; then  # the first runs also start first, before the others load the CPUs
  launch=$( { grep -E -- "$FIRST" <<<"$launch" || true; grep -vE -- "$FIRST" <<<"$launch" || true; } )
fi
start=$(date +%s)
status=0  # a failed run still leaves a sitting record; the script then exits 1
printf '%s\n' "$launch" | "${PYTHON:-python3}" scripts/run_commands.py --jobs "$JOBS" --deadline "$DEADLINE" \
    --logdir "$RESULTS/logs" || status=$?
end=$(date +%s)
if [ "$started_mps" = 1 ]; then
  # other sittings' runs: forked by their runners, they carry the runner's command line (this sitting's
  # runner has exited)
  while pgrep -f "run_commands\.py .*--logdir $RESULTS/logs" >/dev/null; do sleep 5; done
  echo quit | nvidia-cuda-mps-control
  # quit returns before the daemon is gone: a sitting started meanwhile would take the dying daemon for a
  # live one and run without MPS (it happened: nine IMDb runs went 3x slower)
  for _ in $(seq 60); do pgrep -x nvidia-cuda-mps >/dev/null || break; sleep 1; done
fi
mkdir -p "$RESULTS/sittings"
name="$(date -u -d @"$start" +%Y%m%dT%H%M%SZ)_$(echo "$TABLES" | tr ' ' '-')_s$(echo "$SEEDS" | tr -d ' ')"
"${PYTHON:-python3}" - "$RESULTS/sittings/$name.json" "$start" "$end" "$TABLES" "$SEEDS" \
    "$JOBS" "$DEADLINE" "$mps" "$POPULATIONS" "$launch" <<'PY'
import json, sys, torch
path, start, end, tables, seeds, jobs, deadline, mps, populations, commands = sys.argv[1:]
json.dump({"tables": tables.split(), "seeds": seeds.split(), "jobs": int(jobs), "deadline_s": int(deadline),
           "mps": mps == "1", "populations": populations == "1", "wall_s": int(end) - int(start),
           "runs": commands.splitlines(),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
          open(path, "w"), indent=2)
print(f"sitting: {int(end) - int(start)} s wall for {len(commands.splitlines())} runs -> {path}")
PY
exit "$status"
