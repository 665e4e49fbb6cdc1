# The tuning's optional second stage on a GPU, should a planner adopt it (docs/comparison.md): the candidates within
# the validation noise of their method's choice (results/tuning/cifar100-tiny128-full/tuned/README.md: 41 of them)
# train again over the first 4 tasks, 16 at once, into a copy of the committed tuning folder. About 30 minutes of an
# H200 (the last 24 two-task candidates took 9): two sessions; the second starts from what integrate.sh filed, and a
# candidate cut by the budget starts again (checkpoints do not come back). Any card: each candidate records its machine.
T="$W/tuning/cifar100-tiny128-full/tuned"
[ -d "$T" ] || { mkdir -p "$(dirname "$T")" && cp -r results/tuning/cifar100-tiny128-full/tuned "$T"; }
python3 -m benchmarks.tune --protocol cifar100-tiny128-full --methods sdlora seq-lora inflora ranpac aper cl-lora l2p dualprompt coda-prompt mos care --threads 1 --device cuda --workers 0 --jobs 16 --confirm-experiences 4 --out "$W/tuning"
