#!/usr/bin/env bash
# Pack run folders (no checkpoints) into one archive: the GPU tool returns few files, two levels deep.
#   scripts/gpu_pack.sh <runs dir> <archive.tgz>
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0; fi
if [ $# -ne 2 ] || [ ! -d "$1" ]; then
  echo "usage: $0 <runs dir> <archive.tgz> (see --help)" >&2; exit 2
fi
tar czf "$2" --exclude='checkpoint.pt*' -C "$1" .
