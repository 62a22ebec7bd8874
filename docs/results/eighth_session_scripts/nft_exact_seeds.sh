#!/bin/bash
# usage: seeds.sh CORE SEED...
cd "$(dirname "$0")/../../.."  # the repository root
CORE=$1; shift
for S in "$@"; do
  echo "$(date +%T) start nft_exact s$S" >> runs/s8_queue_$CORE.txt
  taskset -c $CORE .venv/bin/python launch/shapes_results.py --out=runs/r28 --steps=100 --eval_samples=4 --eval_every=50 --keep_period=100 --seeds=$S --arms=nft_exact --only=nft_exact --ablation_seeds= > runs/r28_s$S.log 2>&1
  echo "$(date +%T) done nft_exact s$S" >> runs/s8_queue_$CORE.txt
done
