"""The user's optimizer parameter groups under SDLoRA (issue 34): groups and their options kept exactly as given, new
parameters (each task's pair, each experience's head rows) in the group ``new_params_group`` names, ``remove_params``
honoured; and ``train_epochs=0`` accepted as Naive accepts it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from avalanche.core import SupervisedPlugin

from avalanche_sdlora import SDLoRA, sdlora_vit
from test_plugin_compat import BENCH, IMG, evaluator

ALPHA = "magnitudes.alpha"


def model():
    torch.manual_seed(0)
    return sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)


class Groups(SupervisedPlugin):
    """What each optimizer group holds while an experience trains: {group index: names of the model's parameters}."""

    def __init__(self):
        super().__init__()
        self.seen: list[dict[int, set[str]]] = []

    def before_training_epoch(self, strategy, **kwargs):
        names = {id(p): n for n, p in strategy.model.named_parameters()}
        self.seen.append({g: {names.get(id(p), "<foreign>") for p in group["params"]}
                          for g, group in enumerate(strategy.optimizer.param_groups)})


def build(m, opt, **kwargs):
    s = SDLoRA(model=m, optimizer=opt, train_mb_size=8, evaluator=evaluator(), **kwargs)
    s.groups = Groups()
    s.plugins.append(s.groups)
    return s


def options(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def group_names(s):
    """{group index: names of the model's parameters in it} while the last experience trained."""
    return s.groups.seen[-1]


def train_one(s, i):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.train(BENCH.train_stream[i])


def kinds(names):
    return {"alpha" if n == ALPHA else "pair" if "lora_" in n else "head" if n.startswith("head.") else n for n in names}


def test_two_groups_magnitudes_stay_in_theirs_and_new_parameters_join_the_stated_group():
    m = model()
    others = [p for n, p in m.named_parameters() if n != ALPHA]
    opt = torch.optim.SGD([{"params": others, "lr": 0.01, "momentum": 0.9},
                           {"params": [m.magnitudes.alpha], "lr": 0.03, "weight_decay": 0.0}], lr=0.5)
    given = options(opt)
    s = build(m, opt, new_params_group=1)
    for i in range(2):
        train_one(s, i)
        groups = group_names(s)
        assert options(opt) == given  # every option as given, scheduler-free
        assert groups[0] == set()  # group 0 held only frozen backbone tensors
        assert kinds(groups[1]) == {"alpha", "pair", "head"}  # the new alpha tensor, the pair and new head rows
        assert f"head.rows.{i}.weight" in groups[1]


def test_three_groups_a_rule_by_name_a_foreign_group_kept_and_remove_params():
    m = model()
    extra = nn.Linear(3, 2)  # the user's own module, trained by the same optimizer
    opt = torch.optim.SGD([{"params": m.backbone.parameters(), "lr": 0.01},
                           {"params": [m.magnitudes.alpha], "lr": 0.03, "momentum": 0.5},
                           {"params": extra.parameters(), "lr": 0.001, "weight_decay": 0.1}], lr=0.5)
    given = options(opt)
    s = build(m, opt, new_params_group=lambda name: 0 if name.startswith("head.") else 1)
    for i in range(2):
        train_one(s, i)
        groups = group_names(s)
        assert options(opt) == given
        assert kinds(groups[0]) == {"head"} and kinds(groups[1]) == {"alpha", "pair"}
        assert groups[2] == {"<foreign>"} and len(opt.param_groups[2]["params"]) == 2  # kept (remove_params=False)
    s.make_optimizer(remove_params=True)
    assert opt.param_groups[2]["params"] == [] and options(opt) == given


def test_a_parameter_the_user_moves_between_experiences_stays_where_they_put_it():
    m = model()
    opt = torch.optim.SGD([{"params": m.parameters(), "lr": 0.01}, {"params": [], "lr": 0.002}])
    s = build(m, opt)
    train_one(s, 0)
    alpha = m.magnitudes.alpha
    opt.param_groups[0]["params"] = [p for p in opt.param_groups[0]["params"] if p is not alpha]
    opt.param_groups[1]["params"] = [alpha]  # the user gives the magnitudes their own rate
    train_one(s, 1)  # the magnitudes grow into a new tensor (same name): it stays in that group
    assert kinds(group_names(s)[1]) == {"alpha"} and kinds(group_names(s)[0]) == {"pair", "head"}
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.002]


def test_new_params_group_out_of_range_is_one_sentence():
    m = model()
    s = build(m, torch.optim.SGD(m.parameters(), lr=0.01), new_params_group=2)
    with pytest.raises(ValueError, match=r"^new_params_group gave 2 for the new parameter .* has 1 parameter groups; "
                                         r"pass an index below 1"):
        train_one(s, 0)


def test_train_epochs_zero_runs_the_plugins_and_trains_nothing_as_naive_does():
    from avalanche.training.plugins import ReplayPlugin

    m = model()
    replay = ReplayPlugin(mem_size=8)
    s = build(m, torch.optim.SGD(m.parameters(), lr=0.1), train_epochs=0, plugins=[replay])
    train_one(s, 0)
    assert len(replay.storage_policy.buffer) == 8  # the buffer is filled without training
    assert all(float(a.dir_B.abs().sum()) == 0 for a in m.adapters)  # B started at 0 and took no step
    assert torch.equal(m.magnitudes.alpha, torch.full((1,), m.options.alpha_init))
    with pytest.raises(ValueError, match="train_epochs must be 0 or more, got -1"):
        build(model(), torch.optim.SGD(m.parameters(), lr=0.1), train_epochs=-1)
