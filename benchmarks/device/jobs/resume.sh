# A second compute call right after one that ran out of budget (same warm machine): continue every unfinished
# run folder under $W from its checkpoints, all at once.
for d in "$W"/*/*/; do
  [ -f "$d/config.json" ] && [ ! -f "$d/DONE" ] || continue
  echo "resuming $d"
  python3 -m benchmarks.compare --resume "$d" --jobs 8 --quiet &
done
wait
