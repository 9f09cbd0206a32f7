#!/bin/bash
# The README's commands in order, in a fresh clone with ../shared beside it; writes the transcript to
# stdout (docs/readme-transcript.md was made from it). Usage: bash docs/readme-transcript.sh CLONE_DIR
set -u
cd "$1"
export OMP_NUM_THREADS=1
step() { echo; echo "\$ $*"; ( eval "$@" ) 2>&1 | cut -c1-200 | awk 'NR<=12{print} NR==13{print "  [...]"} {last[NR%4]=$0; n=NR} END{if(n>16){for(i=n-3;i<=n;i++) print last[i%4]}}'; echo "[exit ${PIPESTATUS[0]}]"; }
step 'python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e ".[test]" && .venv/bin/dytrim train --preset mnist-lt-fixmatch --out runs/mnist-lt'
source .venv/bin/activate
step 'dytrim presets'
step 'dytrim presets --keys | grep -A1 "^prune.min_keep\|^reweight.kind\|^train.precision"'
step 'dytrim train --preset mnist-lt-dytrim --set train.steps=200 --set train.eval_every=100 --out runs/mnist-dytrim'
step 'dytrim train --resume runs/mnist-dytrim --set train.steps=300'
step 'dytrim data info --preset mnist-lt-fixmatch'
step 'dytrim eval runs/mnist-dytrim'
step 'mkdir -p /tmp/readme-imgs && python -c "
import numpy as np; from PIL import Image
d=np.load(\"src/dytrim/data/embedded/mnist10k.npz\"); x=d[\"x\"]
[Image.fromarray(x[i].reshape(28,28).astype(\"uint8\")).save(f\"/tmp/readme-imgs/d{i}.png\") for i in range(3)]" && ls /tmp/readme-imgs'
step 'dytrim predict runs/mnist-dytrim /tmp/readme-imgs/*.png --out preds.csv && cat preds.csv'
step 'dytrim export runs/mnist-dytrim --format state_dict'
step 'dytrim report runs/mnist-lt runs/mnist-dytrim --out runs/report && ls runs/report'
step 'dytrim dynamics prior --run runs/mnist-lt --run runs/mnist-dytrim --out runs/prior.png'
step 'torchrun --nproc_per_node 2 -m dytrim train --preset mnist-lt-fixmatch --set train.steps=40 --set train.eval_every=20 --out runs/ddp'
step 'python examples/write_image_folders.py --data mnist --root ../shared/data --out /tmp/mnist-lt-png --corrupt 1'
step 'dytrim data info --preset mnist-lt-fixmatch --config /tmp/mnist-lt-png/folder.yaml'
step 'dytrim train --preset mnist-lt-fixmatch --config /tmp/mnist-lt-png/folder.yaml --set debias.methods=cdmad --set train.steps=300 --set train.eval_every=100 --out runs/mnist-png'
step 'dytrim eval runs/mnist-png'
step 'dytrim predict runs/mnist-png /tmp/mnist-lt-png/unlabeled --out preds.csv'
step 'dytrim export runs/mnist-png --format torchscript'
