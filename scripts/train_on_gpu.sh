#!/usr/bin/env bash
# One lease of a GPU machine (the device tool), about 9 minutes in one command: the base
# codec trains first, then the diffusion decoder trains on the base weights just made, so
# the shipped decoder matches the shipped base. (Two processes on one GPU only time-slice
# it: running them side by side bought nothing in session 3.)
# Inputs (carried, not committed): .gpu/shard (dirac train pack), .gpu/base.safetensors and
# .gpu/diffusion.safetensors (the checkpoints to resume, float16 to travel, optionally with
# their .optim files), .gpu/cache (the converted LPIPS weights), .whl (constriction for
# Python 3.12). Checkpoints come back in $OUT as soon as each model is done, the Adam
# moments as bfloat16 and a checkpoint over 15 MiB in two pieces (`cast_safetensors.py --join`
# here), so that every file stays under the 16 MiB limit.
# BASE_MINUTES=0 skips the base and trains the diffusion decoder on .gpu/weights/base.safetensors
# and its manifest.json (the shipped files themselves, so the decoder records the shipped id).
# DIFFUSION_VARIANTS="name:extra args;name:extra args" trains several variants of the
# diffusion decoder side by side from the same checkpoint (diffusion-NAME-checkpoint...), to be
# compared afterwards; by default one run with no extra arguments.
set -uo pipefail
BASE_MINUTES=${BASE_MINUTES:-4.4}
DIFFUSION_MINUTES=${DIFFUSION_MINUTES:-3.8}
DEVICE=${DEVICE:-cuda}
BASE_BATCH=${BASE_BATCH:-128}
DIFFUSION_BATCH=${DIFFUSION_BATCH:-32}
OWN_PREDICTION_FRACTION=${OWN_PREDICTION_FRACTION:-0.5}
DIFFUSION_LR=${DIFFUSION_LR:-1.5e-4}
DIFFUSION_VARIANTS=${DIFFUSION_VARIANTS:-:}
OUT=${OUT:-/tmp/gpu-out}
RUN=${RUN:-/tmp/gpu-run}
mkdir -p "$OUT" "$RUN"
if [ -d .whl ] && ! python3 -c 'import constriction' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# the tree on the path, for scripts/*.py too: the package is not installed there
export DIRAC_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
dirac() { python3 -m diraccodec.cli "$@"; }
cp .gpu/*.safetensors "$RUN/"
# at the head of each log: the machine returns at most 8 files, and split checkpoints take two
gpu=$(nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true)

bring_back() {  # MODEL: its checkpoint as is (in two pieces over 15 MiB), its Adam moments as bfloat16
  if [ "$(stat -c %s "$RUN/$1.safetensors")" -gt 15728640 ]; then  # join here with --join
    python3 scripts/cast_safetensors.py "$RUN/$1.safetensors" "$OUT/$1-checkpoint.safetensors" \
      --split model. "$OUT/$1-checkpoint.rest.safetensors"
  else
    cp "$RUN/$1.safetensors" "$OUT/$1-checkpoint.safetensors"
  fi
  if [ -f "$RUN/$1.optim.safetensors" ]; then
    python3 scripts/cast_safetensors.py "$RUN/$1.optim.safetensors" \
      "$OUT/$1-checkpoint.optim.safetensors" --dtype bfloat16
  fi
}

if [ "$BASE_MINUTES" != 0 ]; then
  dirac train base --data .gpu/shard --checkpoint "$RUN/base.safetensors" --device "$DEVICE" \
    --batch-size "$BASE_BATCH" --patch-size 128 --lr 3e-4 --minutes "$BASE_MINUTES" --checkpoint-minutes 0.5 \
    > "$OUT/base.log" 2>&1
  echo "$gpu" >> "$OUT/base.log"
  bring_back base
  echo "done: $(date)" >> "$OUT/base.log"
  dirac train export "$RUN/base.safetensors" "$RUN/weights/base.safetensors" > "$OUT/diffusion.log" 2>&1
else
  mkdir -p "$RUN/weights" && cp .gpu/weights/base.safetensors .gpu/weights/manifest.json "$RUN/weights/"
fi

names=()
IFS=';' read -ra variants <<< "$DIFFUSION_VARIANTS"
for variant in "${variants[@]}"; do  # copies first: the runs below rewrite diffusion.safetensors
  name=${variant%%:*} model=diffusion${name:+-$name}
  names+=("$model")
  [ "$model" = diffusion ] && continue
  cp "$RUN/diffusion.safetensors" "$RUN/$model.safetensors"
  [ -f "$RUN/diffusion.optim.safetensors" ] && cp "$RUN/diffusion.optim.safetensors" "$RUN/$model.optim.safetensors"
done
for variant in "${variants[@]}"; do
  name=${variant%%:*} extra=${variant#*:} model=diffusion${name:+-$name}
  echo "$gpu" >> "$OUT/$model.log"
  # shellcheck disable=SC2086  # extra holds several arguments
  dirac train diffusion --data .gpu/shard --checkpoint "$RUN/$model.safetensors" --device "$DEVICE" \
    --weights "$RUN/weights/base.safetensors" --batch-size "$DIFFUSION_BATCH" --patch-size 128 \
    --lr "$DIFFUSION_LR" --lpips-weight 1.0 --own-prediction-fraction "$OWN_PREDICTION_FRACTION" \
    --minutes "$DIFFUSION_MINUTES" --checkpoint-minutes 0.5 $extra >> "$OUT/$model.log" 2>&1 &
done
trap 'for model in "${names[@]}"; do bring_back "$model"; done' EXIT
wait
for model in "${names[@]}"; do echo "done: $(date)" >> "$OUT/$model.log"; done
