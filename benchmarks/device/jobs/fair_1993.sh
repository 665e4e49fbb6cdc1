# Issue 30, the H200 table's order 1993: the seven methods it lacks (SD-LoRA, sdlora-rr, seq-lora, SimpleCIL,
# RanPAC and APER have it in results/cifar100-tiny128-full/h200). MOS and CaRE train ~2x longer a task than the
# rest, so they get order 1995 too (lost to the budget on 2026-12-04) in a folder of their own.
REQUIRE_GPU=H200  # the H200 table: an order's runs share one machine (step_compute.sh refuses another card)
T=results/tuning/cifar100-tiny128-full/tuned/chosen.json
C="--protocol cifar100-tiny128-full --class-order seed --tuned $T --threads 1 --device cuda --workers 0 --quiet --out $W"
python3 -m benchmarks.compare $C --seeds 1993 1995 --methods mos care --jobs 4 --run-id fair-h200-mos-care &
python3 -m benchmarks.compare $C --seeds 1993 --methods inflora dualprompt coda-prompt l2p cl-lora --jobs 5 --run-id fair-h200-1993 &
wait
