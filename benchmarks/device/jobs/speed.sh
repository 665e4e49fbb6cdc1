# The cost of a training step against the number of stored tasks on the GPU (peak GPU memory and step time after 1,
# 10, 20 and 50 tasks, as ratios to one; merged inference against the backbone): a few minutes, any card (its
# README names it). integrate.sh files it as results/perf-cuda.
python3 -m benchmarks.speed --device cuda --out "$W/perf-cuda"
