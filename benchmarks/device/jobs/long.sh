# Issue 32 on one machine: 20 tasks of 5 classes and 50 tasks of 2, class orders 1993-1995, every method of the
# issue (InfLoRA under the shared recipe in its own folder: its reference Adam 5e-4 reached 8.44 % at 20 tasks, a
# recipe failure), then the 1/10/20/50-task cost ratios with GPU memory.
C="--class-order seed --threads 1 --device cuda --workers 0 --quiet --out $W"
M="sdlora sdlora-rr sdlora-kd seq-lora ranpac simplecil"
python3 -m benchmarks.compare $C --n-experiences 50 --methods $M --jobs 9 --run-id long50-h200 &
python3 -m benchmarks.compare $C --n-experiences 20 --methods $M --jobs 6 --run-id long20-h200 &
python3 -m benchmarks.compare $C --n-experiences 50 --methods inflora --peer-recipe shared --jobs 3 --run-id long50-h200-inflora-shared &
python3 -m benchmarks.compare $C --n-experiences 20 --methods inflora --peer-recipe shared --jobs 3 --run-id long20-h200-inflora-shared &
wait
python3 -m benchmarks.speed --device cuda --out "$W/perf-cuda"
