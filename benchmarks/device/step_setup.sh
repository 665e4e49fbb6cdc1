#!/usr/bin/env bash
# Device call 1 (carry .devrun/wheels): install the carried packages to /tmp, check that torch sees the GPU and that the library imports, and start CUDA MPS (many small processes
# share the GPU at about twice the throughput without it: 378 vs 177 ViT-Tiny steps/s, measured 2026-12-04).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/env.sh
mkdir -p "$DEVRUN/site" "$DEVRUN/assets" "$DEVRUN/parts" "$SDLORA_IMAGE_CACHE" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$DEVRUN/site" .devrun/wheels/*.whl
for m in wandb gdown; do   # stand-ins: imported by avalanche at module level, never called by this project
  mkdir -p "$DEVRUN/site/$m" && echo "\"\"\"Stand-in for $m on the device machine (no internet).\"\"\"" > "$DEVRUN/site/$m/__init__.py"
done
python3 - <<'PY'
import torch, timm, avalanche, avalanche_sdlora, benchmarks.compare  # noqa: F401
print("torch", torch.__version__, "timm", timm.__version__, "sdlora", avalanche_sdlora.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import os
assert torch.cuda.is_available() or os.environ.get("REQUIRE_CUDA") == "0", "torch sees no GPU"
PY
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS started" || echo "MPS not started: processes share the GPU by time slices"
