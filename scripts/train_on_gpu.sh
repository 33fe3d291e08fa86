#!/usr/bin/env bash
# One lease of a GPU machine (the device tool), about 9 minutes: the base codec trains for
# the whole lease while the diffusion decoder trains beside it in three segments, each on
# the base weights exported at its start, so that it follows the base as it improves.
# Inputs (carried, not committed): .gpu/shard (dirac train pack), .gpu/base.safetensors and
# .gpu/diffusion.safetensors (the checkpoints to resume, float16 to travel), .gpu/cache (the
# converted LPIPS weights), .whl (constriction for Python 3.12). Checkpoints and logs go to $OUT.
set -uo pipefail
MINUTES=${MINUTES:-8.4}            # base training
SEGMENT_MINUTES=${SEGMENT_MINUTES:-2.55}
DEVICE=${DEVICE:-cuda}
BASE_BATCH=${BASE_BATCH:-64}
DIFFUSION_BATCH=${DIFFUSION_BATCH:-32}
OUT=${OUT:-/tmp/gpu-out}
RUN=${RUN:-/tmp/gpu-run}
mkdir -p "$OUT" "$RUN"
if [ -d .whl ] && ! python3 -c 'import constriction' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export DIRAC_CACHE=$PWD/.gpu/cache PYTHONUNBUFFERED=1
dirac() { python3 -m diraccodec.cli "$@"; }
cp .gpu/base.safetensors "$RUN/base.safetensors"
cp .gpu/diffusion.safetensors "$RUN/diffusion.safetensors"
(nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true) > "$OUT/gpu.txt"

save_results() {
  cp "$RUN/base.safetensors" "$OUT/base-checkpoint.safetensors"
  cp "$RUN/diffusion.safetensors" "$OUT/diffusion-checkpoint.safetensors"
}
trap save_results EXIT

dirac train base --data .gpu/shard --checkpoint "$RUN/base.safetensors" --device "$DEVICE" \
  --batch-size "$BASE_BATCH" --patch-size 128 --lr 3e-4 --minutes "$MINUTES" --checkpoint-minutes 0.5 \
  > "$OUT/base.log" 2>&1 &
BASE_PID=$!

for segment in 1 2 3; do
  sleep 2  # lets a checkpoint write finish
  dirac train export "$RUN/base.safetensors" "$RUN/w$segment/base.safetensors" >> "$OUT/diffusion.log" 2>&1
  dirac train diffusion --data .gpu/shard --checkpoint "$RUN/diffusion.safetensors" --device "$DEVICE" \
    --weights "$RUN/w$segment/base.safetensors" --batch-size "$DIFFUSION_BATCH" --patch-size 128 --lr 2e-4 \
    --lpips-weight 1.0 --minutes "$SEGMENT_MINUTES" --checkpoint-minutes 0.5 >> "$OUT/diffusion.log" 2>&1
done
wait "$BASE_PID"
echo "done: $(date)" >> "$OUT/base.log"
