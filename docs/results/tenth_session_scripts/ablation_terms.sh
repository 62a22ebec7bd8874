#!/bin/bash
# usage: ablation_terms.sh CORE [RUN ...]   (RUN: text_only, image_only, no_regulariser; default
# the first two)
# Which part of UniGRPO-NFT's recipe (configs/shapes_uninft.py: exact-scene reward, 200 steps)
# makes its gain, seed 0: the text term alone (configs/shapes_textgrpo.py on the same reward and
# budget), the image term alone (the recipe with the understanding expert's rate 0), the recipe
# without the velocity-MSE regulariser; each scored on the evaluation prompts as Table 2 scores
# seed 0 (4 images per prompt, evaluation seed 0). Writes runs/s10/.
cd "$(dirname "$0")/../../.."  # the repository root
CORE=$1; shift
declare -A RUNS=(
  [text_only]="textgrpo_exact_s0 configs/shapes_textgrpo.py"
  [image_only]="uninft_lrund0_s0 configs/shapes_uninft.py --config.optimizer.lr_und=0"
  [no_regulariser]="uninft_noreg_s0 configs/shapes_uninft.py --config.objective.regularizer=none")
CHOSEN=("$@"); [ ${#CHOSEN[@]} -eq 0 ] && CHOSEN=(text_only image_only)
mkdir -p runs/s10
COMMON="--config.seed=0 --config.total_steps=200 --config.eval_every=0 --config.checkpoint_keep_period=100 --config.reward.options.exact_scene=True"
E=".venv/bin/python launch/evaluate.py --prompts=data/shapes_eval/eval_prompts.jsonl --cfg=1,2 --samples_per_prompt=4"
for KEY in "${CHOSEN[@]}"; do
  set -- ${RUNS[$KEY]}; NAME=$1; CFG=$2; shift 2
  echo "$(date +%T) start $NAME" >> runs/s10/queue_$CORE.txt
  taskset -c $CORE .venv/bin/python launch/train.py --config=$CFG $COMMON "$@" --workdir=runs/s10/$NAME > runs/s10/$NAME.train.log 2>&1
  taskset -c $CORE $E --workdir=runs/s10/$NAME --out=runs/s10/eval_$NAME > runs/s10/eval_$NAME.log 2>&1
done
echo "$(date +%T) done" >> runs/s10/queue_$CORE.txt
