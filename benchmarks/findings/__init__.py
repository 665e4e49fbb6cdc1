"""The paper's three findings (issue 19), reproduced by one command: ``python -m benchmarks.findings``.

* Finding 1, the low-loss region (:mod:`.low_loss`): distances between single-task LoRAs and to the pretrained
  weights; the fixed-direction ablation against sequential LoRA and SD-LoRA.
* Finding 2, directions and magnitudes (:mod:`.directions`): residuals of each new direction on the earlier ones,
  and the magnitude trajectories, under the authors' code defaults and under the paper's recipe.
* Finding 3, interpolation (:mod:`.interpolation`): accuracy and loss along the straight line between the models
  after tasks 1 and 2, for sequential LoRA and SD-LoRA.

:mod:`.sources` holds the runs they read (every training step through ``benchmarks.compare`` / ``benchmarks.runner``)
and the models in their checkpoints; :mod:`.report` the verdicts and README, from the CSVs alone; :mod:`.plots`
the plots; :mod:`.command` the command line.
"""
