#!/usr/bin/env bash
# Pack run folders (no checkpoints) into one archive: the GPU tool returns few files, two levels deep.
#   scripts/gpu_pack.sh <runs dir> <archive.tgz>
set -euo pipefail
tar czf "$2" --exclude='checkpoint.pt*' -C "$1" .
