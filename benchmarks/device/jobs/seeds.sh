# Issue 30: how far training alone moves the LoRA family's 1-2 point gaps. SD-LoRA, its RR variant and sequential
# LoRA on class order 1995 with two more training seeds (0 and 1; the table's run of that order is seed 1995), their
# tuned recipes, on the H200 whose table holds order 1995: with the table's runs, three seeds of each on one order.
# Six runs at once, ~5 minutes. The per-image predictions each run keeps give every pair's test-sample bound too.
REQUIRE_GPU=H200  # pairs with the H200 table's order 1995 (step_compute.sh refuses another card)
T=results/tuning/cifar100-tiny128-full/tuned/chosen.json
C="--protocol cifar100-tiny128-full --class-order fixed --class-order-seed 1995 --tuned $T --threads 1 --device cuda --workers 0 --quiet --out $W"
python3 -m benchmarks.compare $C --seeds 0 1 --methods sdlora sdlora-rr seq-lora --jobs 6 --run-id fair-h200-1995-seeds
