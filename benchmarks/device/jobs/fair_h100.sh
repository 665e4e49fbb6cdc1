# Issue 30 on an H100, should only H100s be lent: one class order (ORDER=1993, 1994 or 1995; default 1993) of the
# whole full-data table, every method with its tuned recipe, in a folder of its own. Its folders form a table of
# their own (results/cifar100-tiny128-full/h100, filed by integrate.sh), never mixed into the H200's orders. MOS and
# CaRE train ~2x longer a task than the rest: plan a jobs/resume.sh call in the same session for them.
REQUIRE_GPU=H100  # the H100 table: an order's runs share one machine (step_compute.sh refuses another card)
ORDER="${ORDER:-1993}"
T=results/tuning/cifar100-tiny128-full/tuned/chosen.json
C="--protocol cifar100-tiny128-full --class-order seed --tuned $T --threads 1 --device cuda --workers 0 --quiet --out $W"
python3 -m benchmarks.compare $C --seeds "$ORDER" --methods mos care cl-lora sdlora sdlora-rr seq-lora simplecil inflora ranpac aper dualprompt coda-prompt l2p --jobs 13 --run-id "fair-h100-$ORDER"
