"""Benchmark harness: side-by-side comparison, speed and budget study."""

import warnings

# Avalanche imports qpsolvers for GEM at import time, which warns "no QP solver found" on every command's first line
# when none is installed; no method of the harness uses GEM, so the commands do not show it (a library user who
# imports Avalanche still sees it, as Avalanche intends).
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning, module="qpsolvers")
