# The plumbing in a minute (DEVICE=cpu for a rehearsal on a CPU machine): two methods, 4 classes, 2 tasks.
C="--classes 4 --n-experiences 2 --train-per-class 8 --test-per-class 4 --epochs 1 --threads 1 --device ${DEVICE:-cuda} --workers 0 --quiet --out $W"
python3 -m benchmarks.compare $C --methods sdlora simplecil --jobs 2 --run-id smoke
