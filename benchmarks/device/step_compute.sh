#!/usr/bin/env bash
# The compute call (carry the last piece): join the npz, check it, run a job file for at most $BUDGET seconds,
# and pack every run folder (no checkpoints, no plots: `compare --report-only` redraws them) into $OUT/w.tgz.
#   set -o pipefail; BUDGET=540 bash benchmarks/device/step_compute.sh benchmarks/device/jobs/fair_1993.sh 2>&1 | tee $OUT/c.log
# A job stopped by the budget leaves unfinished runs; a second compute call at once (the machine stays warm for
# 30 s) with jobs/resume.sh continues them from their checkpoints on the same machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/env.sh
JOB="${1:?usage: step_compute.sh JOB_FILE}"
# A job that adds runs to a table of one card names it (REQUIRE_GPU=H200): on another card its runs would mix
# machines within a class order, so it stops here, before any compute.
need=$(sed -n 's/^REQUIRE_GPU=\([A-Za-z0-9]*\).*/\1/p' "$JOB" | head -1)
if [ -n "$need" ]; then
  have=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  if [[ "$have" != *"$need"* ]]; then
    echo "step_compute.sh: $(basename "$JOB") adds to a table run on an NVIDIA $need and this machine has" \
      "'${have:-no GPU}': give it back and call the device tool with kind nvidia-${need,,} from the setup call on" >&2
    exit 2
  fi
fi
BUDGET="${BUDGET:-540}"
bash benchmarks/device/step_part.sh
cp "$DEVRUN/parts/SHA256SUMS" "$DEVRUN/parts/vit_tiny_patch16_224.safetensors" "$SDLORA_ASSETS/" 2>/dev/null
if ! (cd "$SDLORA_ASSETS" && sha256sum -c --quiet SHA256SUMS > /dev/null 2>&1); then
  cat "$DEVRUN"/parts/cifar100.npz.* > "$SDLORA_ASSETS/cifar100.npz"
  if ! (cd "$SDLORA_ASSETS" && sha256sum -c SHA256SUMS); then
    rm -f "$SDLORA_ASSETS/cifar100.npz"
    echo "the assets do not match SHA256SUMS (pieces missing or damaged): repeat the step_part.sh calls" >&2; exit 1
  fi
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout -s TERM -k 30 "$BUDGET" bash "$JOB"
echo "job exit $? after $(( $(date +%s) - start )) s"
for _ in $(seq 30); do pgrep -f "benchmarks\.(compare|speed)" > /dev/null || break; sleep 1; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
tar czf "${OUT:-/tmp}/w.tgz" -C "$DEVRUN" --exclude=checkpoints --exclude='*.png' --exclude='*.pdf' --exclude=.lock w
ls -la "${OUT:-/tmp}/w.tgz"
