#!/usr/bin/env bash
# After a device session: copy each run folder of a compute call's w.tgz into results/ and redraw its report.
#   bash benchmarks/device/integrate.sh /work/.device/<n>/w.tgz
# The full-data comparison's folders go to results/cifar100-tiny128-full/<card>/<run-id>, h200 or h100 by the card
# their config.json names (each card's table keeps its class orders on one machine; any other card, or none
# recorded, is refused), the others to results/<protocol>/<run-id>. An existing folder is never overwritten: rename the run or remove it first.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
TGZ="${1:?usage: integrate.sh W_TGZ}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xzf "$TGZ" -C "$tmp"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
for run in "$tmp"/w/*/*/; do
  run=${run%/}; id=$(basename "$run"); protocol=$(basename "$(dirname "$run")")
  [ -f "$run/config.json" ] || continue
  dest="results/$protocol/$id"
  if [ "$protocol" = cifar100-tiny128-full ]; then
    gpu=$(grep -o '"device_name": "[^"]*"' "$run/config.json" | head -1 | cut -d'"' -f4 || true)
    case "$gpu" in
      *H200*) card=h200 ;;
      *H100*) card=h100 ;;
      *) echo "integrate.sh: $id ran on '${gpu:-an unrecorded device}', neither an NVIDIA H200 nor an H100, the cards" \
           "with a table under results/$protocol (an order's runs must not mix machines): left out (copy it to a" \
           "folder named after its card)" >&2
         continue ;;
    esac
    dest="results/$protocol/$card/$id"
  fi
  if [ -e "$dest" ]; then echo "integrate.sh: $dest exists; left as it is (rename the run to keep both)" >&2; continue; fi
  mkdir -p "$(dirname "$dest")" && cp -r "$run" "$dest" && rm -f "$dest/.lock"
  state=$([ -f "$dest/DONE" ] && echo finished || echo "unfinished (its finished (method, seed) runs count)")
  echo "$dest: $state"
  "$PY" -m benchmarks.compare --report-only "$dest" > /dev/null
done
if [ -f "$tmp/w/perf-cuda/README.md" ]; then   # jobs/speed.sh: the cost tables of benchmarks.speed on the GPU
  if [ -e results/perf-cuda ]; then echo "integrate.sh: results/perf-cuda exists; left as it is" >&2
  else cp -r "$tmp/w/perf-cuda" results/perf-cuda && echo "results/perf-cuda: $(grep -m1 -o 'GPU: [^;]*' results/perf-cuda/README.md || true)"; fi
fi
# jobs/confirm.sh: the second stage's candidates go beside the committed tuning's (an existing one is kept), with
# their failures; the report is then rewritten here with the same flag
for stage in "$tmp"/w/tuning/*/*/confirm/*/; do
  [ -d "$stage" ] || continue
  stage=${stage%/}; tuning=$(dirname "$(dirname "$stage")"); id=$(basename "$tuning")
  protocol=$(basename "$(dirname "$tuning")"); dest="results/tuning/$protocol/$id"
  if [ ! -d "$dest" ]; then echo "integrate.sh: $dest does not exist; its second stage is left out" >&2; continue; fi
  for cand in "$stage"/*/*/; do
    cand=${cand%/}; rel=confirm/$(basename "$stage")/$(basename "$(dirname "$cand")")/$(basename "$cand")
    if [ -e "$dest/$rel" ]; then echo "integrate.sh: $dest/$rel exists; left as it is" >&2; continue; fi
    mkdir -p "$(dirname "$dest/$rel")" && cp -r "$cand" "$dest/$rel" && rm -f "$dest/$rel/.lock"
    echo "$dest/$rel: $([ -f "$dest/$rel/DONE" ] && echo finished || echo unfinished)"
  done
  if [ -f "$tuning/failures.json" ]; then
    "$PY" - "$tuning/failures.json" "$dest/failures.json" <<'PYEOF'
import json, sys
from pathlib import Path
new, old = Path(sys.argv[1]), Path(sys.argv[2])
kept = json.loads(old.read_text()) if old.exists() else {}
kept.update({k: v for k, v in json.loads(new.read_text()).items() if "@" in k})  # the second stage's own keys
old.write_text(json.dumps(kept, indent=2) + "\n")
PYEOF
  fi
  echo "next: python -m benchmarks.tune --protocol $protocol --methods ... --out results/tuning --run-id $id" \
       "--report-only --confirm-experiences ${stage##*experiences} (the methods and flags of the tuning's README command)"
done
echo "next: add the new folders to the orders command in results/README.md (its h200 or h100 section), rerun it and"
echo "      python -m benchmarks.headline; then the targeted tests (test_orders test_readme test_headline test_local_paths)"
