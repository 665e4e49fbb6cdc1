"""The paper's Table 4 ablations as rows of the comparison (issue 19): SD-LoRA with one ``variant`` each.

Each row is the ``sdlora`` method (its builder, recipe and stored-parameter count, whatever preset or ``--lr`` it
trains with) on a RunConfig whose SD-LoRA options set the row's variant, read exactly in
:data:`avalanche_sdlora.options.VARIANTS`; the strategy receives it through those options (``variant`` is a strategy
option, implemented by its growth plugin). ``--variant`` on the command line still sets the ``sdlora`` row's variant;
these rows always run their own.

``frozen-old-magnitudes`` keeps old magnitudes at their learned values, so it runs with ``reset_alphas=False``
whatever ``--reset-alphas`` says; full SD-LoRA under that setting is the row ``sdlora-keep-alphas``, so a comparison
of the two differs by the frozen magnitudes alone (under ``--reset-alphas false`` it equals ``sdlora``). The other
two ablations follow ``--reset-alphas`` as ``sdlora`` does, so they compare with the ``sdlora`` row.
"""

from __future__ import annotations

from ..config import RunConfig
from . import sdlora
from .registry import Recipe, get_method, register_method

# method name -> (variant, the SD-LoRA options the row fixes beside it, summary for --help)
ABLATIONS: dict[str, tuple[str, dict, str]] = {
    "sdlora-keep-alphas": ("full", {"reset_alphas": False},
                           "SD-LoRA with learned magnitudes kept at a new task (reset_alphas=False): the reference "
                           "row of sdlora-frozen-old-magnitudes"),
    "sdlora-fixed-direction": ("fixed-direction", {},
                               "Table 4 (i): task 1's direction frozen, later tasks train only its magnitude and "
                               "the head"),
    "sdlora-single-component": ("single-component", {},
                                "Table 4 (ii): one pair alpha * normalised(B A) trained through every task"),
    "sdlora-frozen-old-magnitudes": ("frozen-old-magnitudes", {"reset_alphas": False},
                                     "Table 4 (iii): old magnitudes frozen at their learned values "
                                     "(reset_alphas=False)"),
}


def ablation_config(cfg: RunConfig, method: str) -> RunConfig:
    """``cfg`` with the SD-LoRA options of ablation ``method`` (its variant and what that variant needs)."""
    variant, fixed, _ = ABLATIONS[method]
    return cfg.replace(sdlora=cfg.sdlora.replace(variant=variant, **fixed))


def live_pair_params(model) -> int:
    """Numbers of the live pair, if any (``stored_adapter_params`` counts finished directions only)."""
    return sum(a.lora_A.numel() + a.lora_B.numel() for a in model.adapters if a.lora_A is not None)


def stored_params(strategy) -> int:
    """SD-LoRA's count (head, directions, scales, magnitudes) plus a pair that stays live after its task.

    Only ``single-component`` keeps one (it is never frozen, so it is what that row stores, as for ``seq-lora``);
    for the other variants the pair is frozen into a direction when a task ends and this adds nothing.
    """
    return sdlora.stored_params(strategy) + live_pair_params(strategy.model)


def _register(method: str) -> None:
    variant, fixed, summary = ABLATIONS[method]

    def build(cfg, num_classes, evaluator, plugins):
        strategy = get_method("sdlora").build(ablation_config(cfg, method), num_classes, evaluator, plugins)
        got = (strategy.options.variant, strategy.options.reset_alphas)
        want = (variant, fixed.get("reset_alphas", cfg.sdlora.reset_alphas))
        if got != want:  # a preset of the sdlora builder must not override the row's own options
            raise RuntimeError(f"method '{method}' built an SD-LoRA strategy with (variant, reset_alphas) = {got}, "
                               f"not {want}; the sdlora builder overrode the ablation's options")
        return strategy

    def recipe(cfg: RunConfig) -> Recipe:
        return get_method("sdlora").recipe(ablation_config(cfg, method))

    hparams = {**sdlora.REFERENCE_HPARAMS, "variant": (variant, "paper Table 4; avalanche_sdlora.options.VARIANTS")}
    if "reset_alphas" in fixed:
        hparams["reset_alphas"] = (fixed["reset_alphas"], "fixed by this row (benchmarks/methods/sdlora_ablations.py)")
    register_method(method, summary=summary, stored_params=stored_params, recipe=recipe, checkpointable=True,
                    reference_hparams=hparams)(build)


for _name in ABLATIONS:
    _register(_name)
