"""The search space of equal tuning (issue 30): which candidate recipes each method gets, the same for all.

:mod:`benchmarks.tune` runs them; this module only says what they are: ``len(GRID_DECADES)`` learning rates per
optimizer around the method's reference rate (or the protocol's ``--lr`` for SGD, ``ADAM_ANCHOR`` for Adam), Adam
only where a published recipe of the method uses it, every published recipe among the candidates, then
``EXTENSION_STEPS`` adaptive candidates per optimizer past the better-scoring end (:func:`extension`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import RunConfig
from .methods import get_method
from .protocols import AUTHORS_LR

if TYPE_CHECKING:
    from .tune_runs import Outcome

GRID_DECADES = (-0.5, 0.0, 0.5)  # learning rates per optimizer: anchor * 10**d
EXTENSION_STEPS = 2  # adaptive candidates per optimizer after its grid (:func:`extension`); 1 left APER and CaRE at an edge
EXTENSION_DECADES = 0.5  # how far each goes past the end it extends: the grid's own spacing
OPTIMIZERS = ("sgd", "adam")
ADAM_ANCHOR = 1e-3  # Adam's customary rate (Kingma & Ba; torch's default), for a method whose reference has no Adam


@dataclass(frozen=True)
class Recipe:
    """A training recipe: optimizer, learning rate, the method options its source sets, and where it comes from."""

    optimizer: str
    lr: float
    options: tuple[tuple[str, Any], ...] = ()
    source: str = "grid"

    @property
    def key(self) -> str:
        """A file-name-safe name of the candidate (its folder)."""
        extra = "".join(f"-{k}{v}" for k, v in self.options)
        return f"{self.optimizer}-lr{self.lr:.3g}{extra}".replace("/", "_").replace(" ", "")

    def method_options(self, method: str) -> tuple[tuple[str, str, Any], ...]:
        """The ``--method-option`` entries that make ``method`` train with this recipe."""
        return ((method, "optimizer", self.optimizer), (method, "lr", self.lr),
                *((method, k, v) for k, v in self.options))


_SDLORA_SGD = Recipe("sgd", AUTHORS_LR[("cifar100", None)][0], (),
                     f"SD-LoRA authors' code on CIFAR-100 ({AUTHORS_LR[('cifar100', None)][1]})")
_SDLORA_ADAM = Recipe("adam", 8e-3, (), "the SD-LoRA paper, Sec. 5 (Adam, lr 8e-3)")


def _l2p_pytorch(batch_size: int) -> Recipe:
    return Recipe("adam", 0.03 * batch_size / 256, (),
                  f"l2p-pytorch configs/cifar100_l2p.py: Adam, lr 0.03 scaled by batch/256 (main.py), at batch "
                  f"{batch_size}")


def _dualprompt_pytorch(batch_size: int) -> Recipe:
    return Recipe("adam", 0.03 * batch_size / 256, (("clip_grad", 1.0), ("pull_coeff", 1.0)),
                  f"dualprompt-pytorch configs/cifar100_dualprompt.py: Adam, lr 0.03 scaled by batch/256, pull "
                  f"constraint 1.0, gradient clipping 1.0, at batch {batch_size}")


def reference_recipes(method: str, cfg: RunConfig) -> list[Recipe]:
    """Every published recipe of ``method`` (the first of an optimizer is its grid's anchor): the registered
    reference recipe of a peer (``REFERENCE_HPARAMS``' optimizer and lr, its source's other settings being the
    builder's defaults), then those of other sources."""
    m = get_method(method)
    out: list[Recipe] = []
    hp = m.reference_hparams
    if "optimizer" in hp and "lr" in hp and hp["optimizer"][0] in OPTIMIZERS:
        out.append(Recipe(hp["optimizer"][0], float(hp["lr"][0]), (), f"{hp['lr'][1]} (the method's reference)"))
    if method in ("sdlora", "sdlora-rr", "sdlora-kd"):
        out = [_SDLORA_SGD, _SDLORA_ADAM]
    elif method == "l2p":
        out.append(_l2p_pytorch(cfg.batch_size))
    elif method == "dualprompt":
        out.append(_dualprompt_pytorch(cfg.batch_size))
    return out


# A reference schedule written for many epochs gets the same curve per iteration at the protocol's few (issue 30):
# CODA's per-epoch cosine at 3 epochs would run the last third at 1.6 % of the rate (benchmarks/peers/step_schedule.py).
FITTED_SCHEDULES: dict[str, tuple[tuple[str, Any], ...]] = {
    "coda-prompt": (("schedule", "cosine-steps"),), "inflora": (("schedule", "cosine-steps"),)}


def trains_by_gradient(method: str, cfg: RunConfig) -> bool:
    return get_method(method).recipe(cfg).optimizer is not None


def optimizers_of(refs: Sequence[Recipe]) -> tuple[str, ...]:
    """The optimizers a method is tuned with: SGD always (the shared recipe's), Adam too when one of its published
    recipes uses Adam, so that a method is never held to an optimizer its reference did not choose (issue 30: "for
    methods whose reference uses Adam, both Adam and SGD")."""
    return tuple(o for o in OPTIMIZERS if o == "sgd" or any(r.optimizer == o for r in refs))


def candidates(method: str, cfg: RunConfig) -> list[Recipe]:
    """The candidates of ``method``: ``len(GRID_DECADES)`` learning rates per optimizer of :func:`optimizers_of` for
    every method that trains by gradient (none for the others), each published recipe among them."""
    if get_method(method).recipe_of or not trains_by_gradient(method, cfg):
        return []
    refs = reference_recipes(method, cfg)
    out: list[Recipe] = []
    for opt in optimizers_of(refs):
        own = [r for r in refs if r.optimizer == opt]
        if own:
            anchor = own[0]
        elif opt == "sgd":
            anchor = Recipe("sgd", cfg.lr, (), "the protocol's --lr")
        else:
            anchor = Recipe("adam", ADAM_ANCHOR, (), "Adam's customary lr (no Adam in the method's reference)")
        grid = [anchor if d == 0 else Recipe(opt, anchor.lr * 10 ** d, anchor.options, "grid")
                for d in GRID_DECADES]
        for extra in own[1:]:  # another published recipe takes the place of the grid point nearest to it
            free = [i for i, r in enumerate(grid) if r.source == "grid"]
            i = min(free, key=lambda i: abs(math.log10(grid[i].lr / extra.lr)))
            grid[i] = extra
        out += grid
    fitted = FITTED_SCHEDULES.get(method, ())
    return [Recipe(r.optimizer, r.lr, (*r.options, *fitted), r.source) for r in out]


def candidate_count(method: str, cfg: RunConfig) -> int:
    """How many candidates ``method`` trains in all: its grid and ``EXTENSION_STEPS`` per optimizer of the grid."""
    grid = candidates(method, cfg)
    return len(grid) + EXTENSION_STEPS * len({r.optimizer for r in grid})


def extension(tried: Sequence[tuple[Recipe, "Outcome"]]) -> Recipe | None:
    """The next candidate of one optimizer after the candidates ``tried`` (its recipes with their outcomes): the
    recipe at the better-scoring end of the rates tried (the lowest or the highest; a failed candidate scores below
    any finished one; ties: the lower rate, the one less likely to diverge), with the same settings, half a decade
    (``EXTENSION_DECADES``) further out. Where the best candidate is the highest rate tried, this tries a higher one;
    where it lies inside, it goes past the better of the two ends, so that every method gets the same number of
    candidates. ``None`` while a candidate tried has not run yet (the step depends on every score)."""
    if not tried or any(o.pending for _, o in tried):
        return None

    def score(o: Outcome) -> tuple[float, float]:
        done = o.status == "done" and math.isfinite(o.val_acc)
        return (o.val_acc, o.val_mean_acc if math.isfinite(o.val_mean_acc) else -math.inf) if done else (-math.inf, -math.inf)

    low = min(tried, key=lambda t: t[0].lr)
    high = max(tried, key=lambda t: t[0].lr)
    up = score(high[1]) > score(low[1])
    end = high[0] if up else low[0]
    factor = 10 ** (EXTENSION_DECADES if up else -EXTENSION_DECADES)
    return Recipe(end.optimizer, end.lr * factor, end.options,
                  f"extension: half a decade past the {'highest' if up else 'lowest'} rate tried, the better end")
