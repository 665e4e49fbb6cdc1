#!/usr/bin/env bash
# Device calls 2..: put what this call carries (.devrun/dK: the weights, or a piece of the npz) aside in /tmp until
# the compute call.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/device/env.sh
mkdir -p "$DEVRUN/parts"
n=0
for p in .devrun/d*/*; do [ -f "$p" ] && cp "$p" "$DEVRUN/parts/" && n=$((n + 1)); done
echo "$n piece(s) copied; now held: $(ls "$DEVRUN/parts" | tr '\n' ' ')"
