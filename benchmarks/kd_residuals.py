"""KD's test statistic for every stored direction of an SD-LoRA checkpoint.

``python -m benchmarks.kd_residuals <run folder>/checkpoints/<method>-seed<k> [--experience K]``
prints, for each task k >= 1, ||r||^2 / ||D_k||^2 of its direction on the directions before it, and the
smallest threshold at which SD-LoRA-KD would have absorbed at least one task.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avalanche_sdlora import sdlora_vit
from avalanche_sdlora.checkpoint import latest_checkpoint, load_checkpoint
from avalanche_sdlora.plugins.distillation import direction_residuals

from . import compare, inputs
from .config import RunConfig
from .run_folder import RunFolder


def main(argv: list[str] | None = None) -> list[float]:
    p = compare.Parser(prog="python -m benchmarks.kd_residuals", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", help="a checkpoints/<method>-seed<k> folder written by benchmarks.compare")
    p.add_argument("--experience", type=int, help="which checkpoint (default: the last)")
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoints)
    exp = args.experience if args.experience is not None else latest_checkpoint(ckpt)
    if exp is None:
        raise SystemExit(f"error: no checkpoint in '{ckpt}'")
    folder = RunFolder(ckpt.parent.parent)
    if not folder.has_config():
        raise SystemExit(f"error: '{ckpt}' is not in a run folder of benchmarks.compare (no {folder.config_path})")
    cfg = RunConfig.from_json(folder.read_config())
    # The run's own weights file: the checkpoint's adapters are refused on any other base (its fingerprint).
    model = sdlora_vit(cfg.model, img_size=cfg.img_size, options=cfg.sdlora,
                       checkpoint=inputs.resolve_checkpoint(cfg.model, cfg.checkpoint))
    load_checkpoint(ckpt, exp, model)
    res = direction_residuals(model)
    for k, r in enumerate(res, start=1):
        print(f"direction {k}: relative residual {r:.6f}")
    if res:
        print(f"smallest: {min(res):.6f} (KD absorbs a task at thresholds >= this; default 9e-4)")
    return res


if __name__ == "__main__":
    sys.exit(compare.cli(main=main))  # errors as one line, as compare's
