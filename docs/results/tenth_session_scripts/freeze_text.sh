#!/bin/bash
# usage: freeze_text.sh CORE SEED [LR_UND]
# Continues UniGRPO's step-100 validation run of SEED (runs/s7/uni_sSEED, checkpoints kept at
# 100) to step 200 with the understanding expert's learning rate set to LR_UND (default 0: the
# text policy frozen), everything else as configs/shapes_unigrpo.py; then scores steps 150 and
# 200 on the validation prompts. The copy's rl_config.json records the new rate, so the resume
# check sees the run's own config.
cd "$(dirname "$0")/../../.."  # the repository root
CORE=$1; SEED=$2; LR=${3:-0}
SRC=runs/s7/uni_s$SEED; NAME=uni_frz${LR}_s$SEED; W=runs/s7/$NAME
rm -rf $W && mkdir -p $W/checkpoints && cp -r $SRC/checkpoints/100 $W/checkpoints/
.venv/bin/python - "$SRC" "$W" "$LR" <<'PY'
import json, sys
src, w, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
config = json.load(open(f'{src}/rl_config.json'))
config['optimizer']['lr_und'] = lr
json.dump(config, open(f'{w}/rl_config.json', 'w'), indent=1)
rows = [r for r in map(json.loads, open(f'{src}/metrics.jsonl')) if r['step'] <= 100]
open(f'{w}/metrics.jsonl', 'w').writelines(json.dumps(r) + '\n' for r in rows)
PY
echo "$(date +%T) start $NAME" >> runs/s7/queue_$CORE.txt
taskset -c $CORE .venv/bin/python launch/train.py --config=configs/shapes_unigrpo.py --config.seed=$SEED --config.total_steps=200 --config.eval_every=0 --config.checkpoint_keep_period=50 --config.optimizer.lr_und=$LR --workdir=$W > runs/s7/$NAME.train.log 2>&1
for S in 150 200; do
  taskset -c $CORE .venv/bin/python launch/evaluate.py --workdir=$W --step=$S --prompts=data/shapes_eval/val_prompts.jsonl --cfg=1,2 --out=runs/s7/val_${NAME}_$S > runs/s7/val_${NAME}_$S.log 2>&1
done
echo "$(date +%T) done $NAME" >> runs/s7/queue_$CORE.txt
