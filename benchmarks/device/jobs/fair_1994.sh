# Issue 30, the H200 table's order 1994 for the eleven methods that lack it (RanPAC and APER have it).
REQUIRE_GPU=H200  # the H200 table: an order's runs share one machine (step_compute.sh refuses another card)
T=results/tuning/cifar100-tiny128-full/tuned/chosen.json
C="--protocol cifar100-tiny128-full --class-order seed --tuned $T --threads 1 --device cuda --workers 0 --quiet --out $W"
python3 -m benchmarks.compare $C --seeds 1994 --methods mos care cl-lora sdlora sdlora-rr seq-lora simplecil inflora dualprompt coda-prompt l2p --jobs 11 --run-id fair-h200-1994
