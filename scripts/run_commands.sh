#!/usr/bin/env bash
# Run the commands on stdin (one per line), N at a time, logging each one's output under LOGDIR.
#   run_commands.sh [--jobs N] [--deadline SECONDS] [--logdir DIR] < commands.txt
# --deadline: after SECONDS from now, running commands get SIGINT (the engine then saves a checkpoint
# and a summary marked "interrupted"; re-running with --skip_finished resumes them) and no new one starts.
set -euo pipefail
JOBS=4; DEADLINE=0; LOGDIR="logs"
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --deadline) DEADLINE="$2"; shift 2 ;;
    --logdir) LOGDIR="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$LOGDIR"
END=$(( DEADLINE > 0 ? $(date +%s) + DEADLINE : 0 ))
export END LOGDIR
n=0
while IFS= read -r cmd; do
  [ -z "$cmd" ] && continue
  n=$((n + 1))
  printf '%s\t%s\n' "$n" "$cmd"
done | xargs -P "$JOBS" -d '\n' -I{} bash -c '
  id="${1%%	*}"; cmd="${1#*	}"
  if [ "$END" -gt 0 ]; then
    left=$(( END - $(date +%s) ))
    [ "$left" -gt 10 ] || { echo "not started (deadline): $cmd"; exit 0; }
    cmd="timeout -s INT -k 60 $left $cmd"
  fi
  start=$(date +%s)
  if $cmd >"$LOGDIR/$id.log" 2>&1; then status=ok; else status="exit $?"; fi
  echo "[$status, $(( $(date +%s) - start )) s] $cmd"
' _ {}
