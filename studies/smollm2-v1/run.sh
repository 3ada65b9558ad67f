#!/usr/bin/env bash
# The smollm2-v1 study, exactly as it was run (see README.md beside this file).
# Resumable: every step skips what results.sqlite already holds.
set -euo pipefail
cd "$(dirname "$0")"
IM=${IM:-instructmining}
D=../../../shared/data
if [ ! -f study.json ]; then
  $IM study plan \
    --source alpaca=$D/pools/alpaca_random_9k.json \
    --source hh_chosen=$D/pools/hh_rlhf/helpful-base_test.jsonl.gz \
    --source hh_rejected=$D/pools/hh_rlhf/helpful-base_test.jsonl.gz \
    --source-map hh_rejected:transcript=rejected \
    --eval $D/eval/self_instruct_user_oriented_252.jsonl \
    --eval $D/eval/vicuna80_questions.jsonl --eval $D/eval/vicuna80_answers_gpt35.jsonl \
    --profile local --n-mixtures 24 --size 256 \
    --univariate input_length,output_length,mtld,knn6,perplexity,ifd --bins 4 --bin-sample 1536 \
    --seed 0 -o .
fi
BASE=smollm2-135m-instruct
# pinned to what "auto" resolved to on the machine that started the study (AVX2, no bf16),
# so that a bf16 machine continues the same configuration instead of starting another
TRAIN="--precision fp32 --template chat"
# noise first: the first three candidates under seeds 0, 1 and 2
NOISE=$(python3 -c "import json; print(','.join(c['candidate_id'] for c in json.load(open('study.json'))['candidates'][:3]))")
$IM study run . --base-model $BASE $TRAIN --only "$NOISE"
$IM study run . --base-model $BASE $TRAIN --seed 1 --only "$NOISE"
$IM study run . --base-model $BASE $TRAIN --seed 2 --only "$NOISE"
# then every candidate
$IM study run . --base-model $BASE $TRAIN
