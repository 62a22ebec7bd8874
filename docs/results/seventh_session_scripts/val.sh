#!/bin/bash
# usage: val.sh CORE NAME CONFIG STEPS "overrides" [eval steps...]
cd "$(dirname "$0")/../../.."  # the repository root
CORE=$1; NAME=$2; CFG=$3; STEPS=$4; OVR=$5; shift 5
mkdir -p runs/s7
W=runs/s7/$NAME
echo "$(date +%T) start $NAME" >> runs/s7/queue_$CORE.txt
taskset -c $CORE .venv/bin/python launch/train.py --config=$CFG --config.total_steps=$STEPS --config.eval_every=0 --config.checkpoint_keep_period=100 $OVR --workdir=$W > runs/s7/$NAME.train.log 2>&1
for S in "$@"; do
  taskset -c $CORE .venv/bin/python launch/evaluate.py --workdir=$W --step=$S --prompts=data/shapes_eval/val_prompts.jsonl --cfg=1,2 --out=runs/s7/val_${NAME}_$S > runs/s7/val_${NAME}_$S.log 2>&1
done
echo "$(date +%T) done $NAME" >> runs/s7/queue_$CORE.txt
