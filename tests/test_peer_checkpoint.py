"""The peers' checkpoints (benchmarks.peer_checkpoint): the library's files for a model that is not an SDLoRAViT.

Each peer's own state is checked end to end by tests/test_methods.py's resume test; here the format: what is
written, that the two loaders refuse each other's files, that a damaged file is skipped as SD-LoRA's are, and that
a strategy without the three methods is refused by name.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from avalanche_sdlora.checkpoint import latest_checkpoint, load_checkpoint, load_state, save_checkpoint, save_state
from avalanche_sdlora.checkpoint import tensor_digest
from benchmarks import peer_checkpoint


class Growing:
    """A stand-in strategy whose model grows one row per task: its structure is the number of rows."""

    def __init__(self) -> None:
        self.model = nn.Module()
        self.model.rows = nn.ParameterList()
        self.plugins, self.evaluator, self.clock = [], None, None

    def grow(self) -> None:
        self.model.rows.append(nn.Parameter(torch.randn(3)))

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return dict(self.model.state_dict())

    def checkpoint_structure(self) -> dict:
        return {"tasks": len(self.model.rows)}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        for _ in range(structure["tasks"]):
            self.grow()
        self.model.load_state_dict(tensors, strict=True)


def test_a_peer_checkpoint_restores_tensors_structure_and_rngs(tmp_path):
    torch.manual_seed(0)
    saved = Growing()
    saved.grow(), saved.grow()
    peer_checkpoint.save(saved, tmp_path, 1, config={"method": "m", "seed": 0})
    after = (torch.rand(2), random.random(), np.random.rand())  # what the RNGs give next in the uninterrupted run
    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    fresh = Growing()
    assert latest_checkpoint(tmp_path) == 1
    extra = peer_checkpoint.load(fresh, tmp_path, 1, config={"method": "m", "seed": 0})
    assert extra["seen_classes"] == [] and len(fresh.model.rows) == 2
    for a, b in zip(saved.model.rows, fresh.model.rows):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(2), after[0]) and random.random() == after[1] and np.random.rand() == after[2]


def test_a_tensor_missing_from_the_structure_is_an_error_not_a_smaller_model(tmp_path):
    s = Growing()
    s.grow(), s.grow()
    tensors, structure = s.checkpoint_tensors(), {"tasks": 1}  # the structure says one task, the tensors hold two
    save_state(tmp_path, 0, tensors, structure)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        peer_checkpoint.load(Growing(), tmp_path, 0, config={})


def test_the_loaders_refuse_each_others_files_and_another_configuration(tmp_path, tiny_vit):
    save_state(tmp_path / "peer", 0, {"w": torch.ones(2)}, {"tasks": 1}, config={"method": "l2p", "seed": 0})
    with pytest.raises(ValueError, match="holds another model's state .* load it with load_state"):
        load_checkpoint(tmp_path / "peer", 0, tiny_vit())
    with pytest.raises(ValueError, match=r"comes from another configuration: \{'seed': \(0, 1\)\}"):
        load_state(tmp_path / "peer", 0, config={"method": "l2p", "seed": 1})
    save_checkpoint(tmp_path / "sdlora", 0, tiny_vit())
    with pytest.raises(ValueError, match="holds an SDLoRAViT's adapters; load it with load_checkpoint"):
        load_state(tmp_path / "sdlora", 0)


def test_a_damaged_peer_checkpoint_is_skipped_naming_its_file(tmp_path):
    for k in (0, 1):
        save_state(tmp_path, k, {"w": torch.full((4,), float(k))}, {"tasks": k + 1})
    path = tmp_path / "exp1.safetensors"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint exp1 .*sha256 differs"):
        assert latest_checkpoint(tmp_path) == 0
    tensors, structure, _ = load_state(tmp_path, 0)
    assert torch.equal(tensors["w"], torch.zeros(4)) and structure == {"tasks": 1}


def test_a_strategy_without_the_three_methods_is_refused_by_name(tmp_path):
    class Plain:
        model = nn.Linear(2, 2)
        plugins, evaluator, clock = [], None, None

    with pytest.raises(TypeError, match="Plain cannot be checkpointed: it defines no checkpoint_tensors"):
        peer_checkpoint.save(Plain(), tmp_path, 0, config={})


class WithBackbone(Growing):
    """A stand-in with a frozen 'backbone' tensor (drawn from torch's seeded RNG, as pretrained weights are fixed)
    and one trainable row per task."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.model.backbone = nn.Linear(4, 4)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.backbone.parameters():
                p.copy_(torch.randn(p.shape, generator=g))


def test_tensors_equal_to_the_base_are_left_out_and_taken_back_from_the_rebuilt_model(tmp_path):
    saved = WithBackbone()
    base = peer_checkpoint.base_digests(saved)
    saved.grow()
    with torch.no_grad():
        saved.model.backbone.bias.add_(1.0)  # trained: differs from the base, so it must be stored
    peer_checkpoint.save(saved, tmp_path, 0, config={}, base=base)
    tensors, _, _ = load_state(tmp_path, 0, base=WithBackbone().checkpoint_tensors())
    stored = set(load_file(tmp_path / "exp0.safetensors"))
    assert "state.backbone.weight" not in stored  # equal to the base: left out
    assert {"state.backbone.bias", "state.rows.0"} <= stored
    fresh = WithBackbone()
    peer_checkpoint.load(fresh, tmp_path, 0, config={})
    for (k, a), (_, b) in zip(saved.model.state_dict().items(), fresh.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(tensors["backbone.weight"], saved.model.backbone.weight)


def test_a_rebuilt_model_whose_base_differs_is_refused_naming_the_tensor(tmp_path):
    saved = WithBackbone()
    base = peer_checkpoint.base_digests(saved)
    saved.grow()
    peer_checkpoint.save(saved, tmp_path, 0, config={}, base=base)
    other = WithBackbone(seed=1)  # other pretrained weights
    with pytest.raises(ValueError, match=r"leaves out 2 tensors equal to the base model .* differs in some of them "
                                         r"\(backbone.bias, backbone.weight\); build the model from the same weights file"):
        peer_checkpoint.load(other, tmp_path, 0, config={})
    with pytest.raises(ValueError, match=r"this model lacks some of them \(backbone.bias, backbone.weight\)"):
        load_state(tmp_path, 0)  # no base given at all


def test_a_checkpoint_whose_record_of_left_out_tensors_is_damaged_is_refused(tmp_path):
    saved = WithBackbone()
    base = peer_checkpoint.base_digests(saved)
    peer_checkpoint.save(saved, tmp_path, 0, config={}, base=base)
    meta = json.loads((tmp_path / "exp0.json").read_text())
    meta["omitted"] = ["backbone.weight"]  # hand-edited: names without digests
    (tmp_path / "exp0.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"exp0.json' is damaged \(its 'omitted' entry is not a map"):
        peer_checkpoint.load(WithBackbone(), tmp_path, 0, config={})


def test_a_digest_tells_dtype_shape_and_values_apart():
    a = torch.randn(3, 4)
    assert tensor_digest(a) == tensor_digest(a.clone()) == tensor_digest(a.t().contiguous().t())
    b = a.clone()
    b[2, 3] = torch.nextafter(b[2, 3], torch.tensor(float("inf")))  # one value one ulp apart
    assert len({tensor_digest(t) for t in (a, a.double(), a.reshape(4, 3), b, a.bfloat16())}) == 5
