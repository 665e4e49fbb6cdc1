"""Which of Avalanche 0.6's plugins SD-LoRA takes, which it refuses and why; the one place these facts live.

The strategies call :func:`check_plugins` when built and at every ``train`` call, so a plugin SD-LoRA cannot honour
stops with one sentence before anything trains, not with an error deep inside the plugin or, worse, a plugin that
runs and does nothing. ``docs/plugins.md`` is the table for readers; ``tests/test_plugin_compat.py`` backs each row.

SD-LoRA adds parameters at every experience (a new pair on every adapter, the new classes' head rows). Plugins that
keep state per parameter name (RWalk, Synaptic Intelligence) must see them as new: the pair of a new task reuses the
names of the finished pair (``...qkv.lora_A``), and state kept under those names belongs to another tensor.
:func:`announce_new_parameters` (called by the growth plugin) drops that state and starts RWalk's running sums of the
new names at zero, as RWalk's own shape expansion does for new entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from avalanche.core import BasePlugin
from avalanche.training import plugins as P
from avalanche.training.utils import ParamData
from torch import nn

_NCM = ("needs a model whose eval_classifier is Avalanche's {kind} and whose feature_extractor gives its features "
        "(a TrainEvalModel); SD-LoRA's model classifies with its own head: drop the plugin")

# Plugins SD-LoRA refuses: {class: why, and what to do}, each read after "<Strategy> cannot take <Plugin>: it ".
REFUSED: dict[type, str] = {
    P.CWRStarPlugin: "consolidates the class rows of an nn.Linear head by hand; SD-LoRA's head already keeps every "
                     "experience's rows in frozen parameters of their own: drop the plugin",
    P.CoPEPlugin: "replaces the model's last linear layer with prototypes; SD-LoRA classifies with its growing head: "
                  "drop the plugin",
    P.FromScratchTrainingPlugin: "restores the initial weights and puts every parameter in one optimizer group before "
                                 "each experience (a lower-bound baseline for fully trained models), while SD-LoRA's "
                                 "backbone is frozen and each experience adds its own pair: for that baseline build a "
                                 "fresh sdlora_vit and strategy per experience",
    P.GDumbPlugin: "retrains a copy of the initial model on its buffer at every experience, which drops SD-LoRA's "
                   "stored directions and the head rows of earlier classes: use ReplayPlugin for replay",
    P.LFLPlugin: "needs an avalanche.models.BaseModel and freezes the model's last nn.Linear (in a ViT an MLP layer, "
                 "not the head): use LwFPlugin to keep the old model's outputs",
    P.FeatureDistillationPlugin: "reads features a model stores in model.features, which SD-LoRA's model does not "
                                 "keep: use LwFPlugin to distil the old model's outputs",
    P.CurrentDataNCMUpdate: _NCM.format(kind="NCMClassifier"),
    P.MemoryNCMUpdate: _NCM.format(kind="NCMClassifier"),
    P.NCMOracle: _NCM.format(kind="NCMClassifier"),
    P.CurrentDataFeCAMUpdate: _NCM.format(kind="FeCAMClassifier"),
    P.MemoryFeCAMUpdate: _NCM.format(kind="FeCAMClassifier"),
    P.FeCAMOracle: _NCM.format(kind="FeCAMClassifier"),
    # Avalanche's own limits: these fail the same way under avalanche.training.Naive (tests/test_plugin_compat.py).
    P.MIRPlugin: "differentiates the loss with respect to every model parameter (torch.autograd.grad over "
                 "model.parameters()), which fails on any frozen parameter, under Naive too (Avalanche 0.6's limit), "
                 "and SD-LoRA's backbone is frozen: use ReplayPlugin",
    P.BiCPlugin: "assigns strategy.experience.dataset, which Avalanche 0.6's experiences do not allow (it fails the "
                 "same way under Naive): use ReplayPlugin",
    P.GSS_greedyPlugin: "fails on Avalanche 0.6's classification experiences before training (max() of an empty "
                        "sequence, under Naive too): use ReplayPlugin",
}


# Plugins that track each parameter's values by name and can only grow them (``ParamData.expand``): knowledge
# distillation (SDLoRAKD, DistillationPlugin) removes a magnitude when it folds a direction into earlier ones.
TRACK_BY_NAME: tuple[type, ...] = (P.EWCPlugin, P.MASPlugin, P.SynapticIntelligencePlugin, P.RWalkPlugin)


def check_no_shrinking(plugins: Sequence[BasePlugin]) -> None:
    """One sentence if a plugin of :data:`TRACK_BY_NAME` is among ``plugins`` of a run whose magnitudes shrink."""
    for p in plugins:
        if isinstance(p, TRACK_BY_NAME):
            raise ValueError(f"{type(p).__name__} cannot follow knowledge distillation (SDLoRAKD or "
                             "DistillationPlugin): it keeps the magnitudes' values by name and can only grow them, "
                             "and distillation removes a magnitude when it folds a direction into earlier ones; use "
                             f"SDLoRA or SDLoRARR with {type(p).__name__}")


def refusal(plugin: BasePlugin, plugins: Sequence[BasePlugin]) -> str | None:
    """The sentence refusing ``plugin`` among ``plugins``, or None if SD-LoRA takes it."""
    name = type(plugin).__name__
    why = next((w for cls, w in REFUSED.items() if type(plugin) is cls), None)
    if why is not None:
        return f"{name}: it {why}"
    if type(plugin) is P.GenerativeReplayPlugin and getattr(plugin, "generator_strategy", None) is None:
        return (f"{name} without generator_strategy=: it then uses the strategy's own model as the generator, and "
                "SD-LoRA's model generates nothing: pass generator_strategy= (e.g. avalanche.training.VAETraining)")
    if type(plugin) is P.TrainGeneratorAfterExpPlugin and not any(
            type(p) is P.GenerativeReplayPlugin and getattr(p, "generator_strategy", None) is not None
            for p in plugins):
        return (f"{name} alone: it trains the generator of a GenerativeReplayPlugin and does nothing without one: "
                "add GenerativeReplayPlugin(generator_strategy=...) or drop it")
    return None


def check_plugins(plugins: Sequence[BasePlugin], strategy: str = "SDLoRA") -> None:
    """Raise one sentence for the first plugin ``strategy`` cannot honour (see :data:`REFUSED`)."""
    for p in plugins:
        why = refusal(p, plugins)
        if why is not None:
            raise ValueError(f"{strategy} cannot take {why}.")


def announce_new_parameters(plugins: Iterable[BasePlugin], model: nn.Module, names: Iterable[str]) -> None:
    """Make plugins that keep state per parameter name see ``names`` as parameters they have never seen.

    Called after the growth plugin adds a pair (its names are the finished pair's) and the head its new rows.
    """
    names = set(names)
    for p in plugins:
        if isinstance(p, P.RWalkPlugin):
            _rwalk(p, model, names)
        elif isinstance(p, P.SynapticIntelligencePlugin):
            for d in (*p.ewc_data, *p.syn_data.values()):
                for n in names:
                    d.pop(n, None)


def _rwalk(plugin: P.RWalkPlugin, model: nn.Module, names: set[str]) -> None:
    for attr in ("checkpoint_params", "checkpoint_loss", "checkpoint_scores", "iter_grad", "iter_importance",
                 "iter_params", "exp_scores", "exp_params", "exp_importance", "exp_penalties"):
        state = getattr(plugin, attr)
        for n in names if state is not None else ():
            state.pop(n, None)
    # RWalk reads its running sums for every parameter with a gradient; a new one starts at zero (its own expansion
    # pads new entries with zeros) and its checkpoint value is where it starts.
    # A parameter that grew (the magnitudes) is expanded as RWalk expands it (zeros for the new entries).
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n not in plugin.checkpoint_loss:
            plugin.checkpoint_loss[n] = ParamData(n, p.shape, device=p.device)
            plugin.checkpoint_scores[n] = ParamData(n, p.shape, device=p.device)
            plugin.checkpoint_params[n] = ParamData(n, device=p.device, init_tensor=p.detach().clone())
        else:
            for state in (plugin.checkpoint_loss, plugin.checkpoint_scores, plugin.checkpoint_params):
                state[n].expand(p.shape)
