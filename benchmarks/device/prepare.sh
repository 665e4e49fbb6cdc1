#!/usr/bin/env bash
# Builds .devrun/ (git-ignored): what a lent GPU machine with no internet needs beside the working tree, cut into
# pieces that each fit one device call (a call carries at most 64 MiB, the working tree and .git included).
# Run here, from anywhere in the repository, on a machine with internet: bash benchmarks/device/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
ASSETS="${SDLORA_ASSETS:-../shared/assets}"
PIECES="${PIECES:-8}"          # the CIFAR-100 npz (167 MB) in this many pieces of ~21 MB, one call each
LIMIT_MB=64
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"   # the environment whose versions travel

for f in cifar100.npz vit_tiny_patch16_224.safetensors; do
  [ -f "$ASSETS/$f" ] || { echo "prepare.sh: $ASSETS/$f not found; set SDLORA_ASSETS to the folder holding it" >&2; exit 1; }
done
rm -rf .devrun && mkdir -p .devrun/wheels .devrun/d1
git gc -q --prune=now   # the device counts .git in a call's 64 MiB: packed, it is about 20 MB

# Pure-Python packages the device lacks (its image has torch, torchvision, matplotlib, scikit-learn, tensorboard,
# torchmetrics, ...): the versions installed here, so both machines run the same library code. timm is there too,
# in another version. wandb and gdown (avalanche imports them at module level, nothing here calls them) get
# stand-ins on the device (step_setup.sh) instead of their many dependencies.
for pkg in avalanche-lib pytorchcv qpsolvers dill GPUtil timm; do
  v=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")
  "$PY" -m pip wheel -q --no-deps -w .devrun/wheels "$pkg==$v" 2>&1 | grep -v "^WARNING: Location" || true
done
for w in .devrun/wheels/*.whl; do
  case "$w" in *-none-any.whl) ;; *) echo "prepare.sh: $w is not a pure-Python wheel; the device needs cp312 x86_64" >&2; exit 1;; esac
done

cp "$ASSETS/vit_tiny_patch16_224.safetensors" .devrun/d1/
(cd "$ASSETS" && sha256sum cifar100.npz vit_tiny_patch16_224.safetensors) > .devrun/d1/SHA256SUMS
split -n "$PIECES" -d -a 2 "$ASSETS/cifar100.npz" .devrun/piece.
i=2
for p in .devrun/piece.*; do
  mkdir -p ".devrun/d$i" && mv "$p" ".devrun/d$i/cifar100.npz.${p##*.}"
  i=$((i + 1))
done

tree_mb=$(( ($(git ls-files -z | du -bc --files0-from=- | tail -1 | cut -f1) + $(du -sb .git | cut -f1)) / 1048576 ))
echo "working tree + .git: ${tree_mb} MiB; each call may carry $((LIMIT_MB - tree_mb - 1)) MiB more"
for d in .devrun/wheels .devrun/d*; do
  mb=$(( $(du -sb "$d" | cut -f1) / 1048576 ))
  echo "  $d: $mb MiB"
done
last=$((i - 1))
echo "calls: setup carry [.devrun/wheels]; step_part.sh carry [.devrun/dK] for K=1..$((last - 1)); compute carry [.devrun/d$last]"
if [ $((tree_mb + 22)) -ge $LIMIT_MB ]; then echo "prepare.sh: a call would carry over ${LIMIT_MB} MiB; raise PIECES" >&2; exit 1; fi
