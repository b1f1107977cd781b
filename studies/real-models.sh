#!/usr/bin/env bash
# The study on real pretrained models in the study's format (paper-style prompts, chat for instruct models),
# cut to what two CPU cores do in an afternoon: docs/finetune.md, docs/probing.md and docs/patching.md say
# which sizes were cut and what was measured. Every stage is saved under OUT/<model>/ keyed by its settings,
# so re-running this script resumes where it stopped and skips what is done; the pieces below can run in
# parallel (different stages) and add up in OUT/<model>/study.json. Writes OUT/report.html.
#
#   bash studies/real-models.sh                          # SmolLM2-135M-Instruct (embedded)
#   MODELS=gemma-3-270m bash studies/real-models.sh
#   python studies/finetune_tables.py results/real-models/gemma-3-270m   # docs/finetune.md's tables
#   MODELS=qwen2.5-coder-0.5b-instruct DTYPE=bfloat16 bash studies/real-models.sh
set -euo pipefail
VRU="${VRU:-.venv/bin/vru-lens}"
OUT="${OUT:-results/real-models}"
MODELS="${MODELS:-smollm2-135m-instruct}"
THREADS="${THREADS:-1}"
# e.g. DTYPE=bfloat16 for Qwen2.5-Coder-0.5B on a CPU (docs/models.md); empty: the model's default. Fine-tuning
# always runs in float32: Adam's steps of about lr = 1e-4 are near one bfloat16 ulp of a 0.02 weight, so full
# fine-tuning in bfloat16 would lose them
DTYPE="${DTYPE:-}"
for MODEL in $MODELS; do
  run() { "$VRU" run --model "$MODEL" --out "$OUT" --n-pairs 64 --threads "$THREADS" --no-progress ${DTYPE:+--dtype "$DTYPE"} "$@"; }
  # evaluation (both scorings, chance, the best rule), probes (heading; object at the heading; step ends and
  # the final question, with control tasks), logit lens: 200 test items, 400 probe items
  run --stages eval,probe,lens --n 200 --n-probe 400
  # exact path, activation and attribution rankings, 64 pairs, 1,000 bootstrap resamples (stage keys do not hold
  # the dtype: a ranking saved in bfloat16 is the one the float32 fine-tuning below reads)
  run --stages rank
  # knockout of the path ranking's top k against random k-sets outside it (k = 1, 4, 16; 2 draws; 100 items)
  run --stages knockout,attention --compare "" --n 100 --top-k 16 --knockout-ks 1,4,16 --n-random 2
  # selective fine-tuning: top-16 heads of the path ranking (W_Q/W_K/W_V/W_O) against random-16, bottom-16,
  # LoRA at the same budget and full fine-tuning; 24 steps x batch 8 (192 items), each method's own lr;
  # 100 test items, 40 story-style and 40 six-action transfer items, 10 items per general task; every arm once
  # per fine-tuning seed (0, 1, 2: every arm's seed 0 first), the items, pairs and ranking those of --seed 0.
  # Learning rates: each method's own (--method-lr: 1e-3 head deltas and LoRA, 1e-4 full) except on gemma-3-270m,
  # where 1e-3 diverged (docs/finetune.md) and every arm runs at 1e-4.
  case "$MODEL" in gemma-3-270m) LR=(--lr 1e-4) ;; *) LR=(--method-lr) ;; esac
  DTYPE="" run --stages rank,finetune --compare "" --n 100 --top-k 16 --baselines random,bottom,lora,full "${LR[@]}" \
      --batch-size 8 --ft-steps 24 --warmup 3 --n-train 192 --n-val 16 --n-transfer 40 --general-n 10 --ft-seeds 0,1,2
done
