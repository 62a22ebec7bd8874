#!/bin/bash
# usage: continue.sh CORE SRC CONFIG SEED LR_UND
# Continues the step-100 validation run runs/s7/SRC (CONFIG at SEED, checkpoint 100 kept) to
# step 200 with the understanding expert's learning rate LR_UND (0: the text policy frozen;
# 1e-4: the config's own rate, i.e. the same run continued), everything else as CONFIG; then
# scores step 200 on the validation prompts. The copy's rl_config.json records the
# rate, so the resume check sees the run's own config; the resume itself drops the copied
# metrics rows past step 100 (loop.keep_metrics_before). Writes runs/s7/SRC_lrLR_UND.
cd "$(dirname "$0")/../../.."  # the repository root
CORE=$1; SRC=runs/s7/$2; CFG=$3; SEED=$4; LR=$5
NAME=$2_lr$LR; W=runs/s7/$NAME
rm -rf $W && mkdir -p $W/checkpoints && cp -r $SRC/checkpoints/100 $W/checkpoints/
cp $SRC/metrics.jsonl $W/
.venv/bin/python - "$SRC" "$W" "$LR" <<'PY'
import json, sys
src, w, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
config = json.load(open(f'{src}/rl_config.json'))
config['optimizer']['lr_und'] = lr
json.dump(config, open(f'{w}/rl_config.json', 'w'), indent=1)
PY
echo "$(date +%T) start $NAME" >> runs/s7/queue_$CORE.txt
taskset -c $CORE .venv/bin/python launch/train.py --config=$CFG --config.seed=$SEED --config.total_steps=200 --config.eval_every=0 --config.checkpoint_keep_period=100 --config.optimizer.lr_und=$LR --workdir=$W > runs/s7/$NAME.train.log 2>&1
taskset -c $CORE .venv/bin/python launch/evaluate.py --workdir=$W --step=200 --prompts=data/shapes_eval/val_prompts.jsonl --cfg=1,2 --out=runs/s7/val_${NAME}_200 > runs/s7/val_${NAME}_200.log 2>&1
echo "$(date +%T) done $NAME" >> runs/s7/queue_$CORE.txt
