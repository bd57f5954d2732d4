#!/usr/bin/env bash
# OPUS-ET (github.com/alncat/opusTomo) on CPU, Python 3.11, torch 2.13, beside subtomo (a
# separate program: nothing of it goes into src/). Usage:
#   bench/opus/setup.sh [SOURCE] [SRC_DIR] [VENV]
# SOURCE: a git URL or git dir (default https://github.com/alncat/opusTomo.git), checked out at
# 690d8e3 into SRC_DIR (default /work/opus_src), patched with patch.diff, installed (editable,
# no deps of its pins) into the venv VENV (default /work/opus_venv) with its requirements
# unpinned. See README.md for what the patch changes.
set -euo pipefail
SOURCE=${1:-https://github.com/alncat/opusTomo.git}
SRC=${2:-/work/opus_src}
VENV=${3:-/work/opus_venv}
COMMIT=690d8e3
HERE=$(cd "$(dirname "$0")" && pwd)
if [ ! -d "$SRC/.git" ]; then
  git clone --no-checkout "$SOURCE" "$SRC"
fi
cd "$SRC"
# a mirror may lack the large binary files (testing data, a notebook): check out the rest
git checkout -q "$COMMIT" -- . 2>/dev/null || {
  for f in $(git ls-tree -r --name-only "$COMMIT"); do
    git cat-file -e "$COMMIT:$f" 2>/dev/null || { echo "skipped (absent): $f"; continue; }
    mkdir -p "$(dirname "$f")"; git show "$COMMIT:$f" > "$f"
  done
}
git apply --check "$HERE/patch.diff" 2>/dev/null && git apply "$HERE/patch.diff" \
  || echo "patch already applied (or conflicting): check git -C $SRC diff"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
# requirements.txt without its pins (numpy 1.24 / scipy 1.10 have no Python 3.11 wheels here)
"$VENV/bin/pip" install -q numpy scipy pandas tqdm typeguard starfile scikit-learn matplotlib \
  seaborn healpy mrcfile monty biopython zstandard adjusttext umap-learn pyarrow
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$SRC"
"$VENV/bin/dsd" train_tomo --help > /dev/null && echo "OPUS-ET ready: $VENV/bin/dsd"
