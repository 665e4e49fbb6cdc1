"""The SD-LoRA update on one adapter, checked against dense matrices built by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avalanche_sdlora.adapter import Magnitudes, SDLoRAQKV
from avalanche_sdlora.variants import PAIR_STARTS

DIM, IN = 6, 8
RANKS = (2, 3, 1)  # different ranks per task exercise the rank-row -> slot mapping


def make_adapter(seed=0, **kwargs):
    torch.manual_seed(seed)
    base = nn.Linear(IN, 3 * DIM).double()
    mags = Magnitudes()
    return SDLoRAQKV(base, mags, **kwargs), mags


def train_fake_task(adapter, mags, rank, g, alpha=0.8):
    """Add a pair, give it random factors (as training would), return its dense B A per slice."""
    slot = mags.append(alpha)
    adapter.add_pair(rank, slot)
    with torch.no_grad():
        adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=g, dtype=torch.float64))
        adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g, dtype=torch.float64))
    return [adapter.lora_B[s].detach() @ adapter.lora_A[s].detach() for s in range(2)]


def dense_directions(adapter, slot):
    return [B @ A for B, A in adapter.directions(slot)]


@pytest.mark.parametrize("normalize_current", [False, True])
def test_delta_weight_equals_explicit_sum(normalize_current):
    adapter, mags = make_adapter(normalize_current=normalize_current, direction_norm="frobenius")
    g = torch.Generator().manual_seed(1)
    old = []
    for r in RANKS:
        old.append(train_fake_task(adapter, mags, r, g))
        adapter.freeze_pair()
    current = train_fake_task(adapter, mags, 2, g)
    with torch.no_grad():
        mags.alpha.copy_(torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=torch.float64))
    alpha = mags.alpha.detach()

    expected = torch.zeros(2, DIM, IN, dtype=torch.float64)
    for s in range(2):
        for k, BA in enumerate(old):
            expected[s] += alpha[k] * BA[s] / torch.linalg.matrix_norm(BA[s])  # unit-Frobenius D_k
        cur = current[s] / torch.linalg.matrix_norm(current[s]) if normalize_current else current[s]
        expected[s] += alpha[3] * cur
    torch.testing.assert_close(adapter.delta_weight(), expected, rtol=1e-10, atol=1e-12)

    # The fused weight gets the update on q and v only, and forward uses it.
    full = adapter.full_delta_weight()
    torch.testing.assert_close(full, torch.cat([expected[0], torch.zeros(DIM, IN, dtype=torch.float64), expected[1]]))
    x = torch.randn(5, 7, IN, dtype=torch.float64, generator=g)
    w = adapter.base_layer.weight + full
    torch.testing.assert_close(adapter(x), F.linear(x, w, adapter.base_layer.bias))


def test_delta_weight_gradients_reach_alpha_and_current_pair_only():
    adapter, mags = make_adapter()
    g = torch.Generator().manual_seed(2)
    train_fake_task(adapter, mags, 2, g)
    adapter.freeze_pair()
    train_fake_task(adapter, mags, 2, g)
    adapter(torch.randn(4, IN, dtype=torch.float64, generator=g)).square().sum().backward()
    assert mags.alpha.grad is not None and torch.all(mags.alpha.grad != 0)
    assert adapter.lora_A.grad is not None and adapter.lora_B.grad is not None
    assert all(p.grad is None for p in adapter.base_layer.parameters())
    assert not any(b.requires_grad for b in adapter.buffers())


def test_stored_directions_have_unit_frobenius_norm():
    adapter, mags = make_adapter(direction_norm="frobenius")
    g = torch.Generator().manual_seed(3)
    trained = []
    for r in RANKS:
        trained.append(train_fake_task(adapter, mags, r, g))
        adapter.freeze_pair()
    assert adapter.stored_rank == sum(RANKS) and adapter.lora_A is None
    assert adapter.dir_slot.tolist() == [k for k, r in enumerate(RANKS) for _ in range(r)]
    for k, BA in enumerate(trained):
        for s, D in enumerate(dense_directions(adapter, k)):
            assert torch.linalg.matrix_norm(D).item() == pytest.approx(1.0, abs=1e-10)
            # same direction as the trained pair, not just any unit matrix
            torch.testing.assert_close(D, BA[s] / torch.linalg.matrix_norm(BA[s]))


def test_factor_norm_divides_by_product_of_factor_norms():
    adapter, mags = make_adapter(direction_norm="factors")
    g = torch.Generator().manual_seed(4)
    adapter.add_pair(3, mags.append(0.8))
    with torch.no_grad():
        adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=g, dtype=torch.float64))
        adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g, dtype=torch.float64))
    A, B = adapter.lora_A.detach().clone(), adapter.lora_B.detach().clone()
    adapter.freeze_pair()
    for s, D in enumerate(dense_directions(adapter, 0)):
        expected = B[s] @ A[s] / (torch.linalg.norm(B[s]) * torch.linalg.norm(A[s]))
        torch.testing.assert_close(D, expected)
        assert torch.linalg.matrix_norm(D).item() < 1.0 - 1e-3  # ||BA|| < ||B|| ||A|| for rank > 1


def test_zero_pair_is_stored_as_zero_direction():
    adapter, mags = make_adapter()
    adapter.add_pair(2, mags.append(0.8))  # B = 0: never trained
    adapter.freeze_pair()
    assert torch.all(adapter.dir_scale == 0)
    assert torch.count_nonzero(adapter.delta_weight()) == 0


def test_drop_slot_removes_one_task_and_renumbers():
    adapter, mags = make_adapter()
    g = torch.Generator().manual_seed(5)
    for r in RANKS:
        train_fake_task(adapter, mags, r, g)
        adapter.freeze_pair()
    keep = [dense_directions(adapter, k) for k in (0, 2)]
    adapter.drop_slot(1)
    assert adapter.stored_rank == RANKS[0] + RANKS[2]
    assert adapter.dir_slot.tolist() == [0] * RANKS[0] + [1] * RANKS[2]
    for new_slot, dirs in enumerate(keep):
        for D_new, D_old in zip(dense_directions(adapter, new_slot), dirs):
            torch.testing.assert_close(D_new, D_old)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_adapter(direction_norm="spectral")
    adapter, mags = make_adapter()
    with pytest.raises(ValueError):
        adapter.add_pair(0, mags.append(0.8))
    adapter.add_pair(2, 0)
    with pytest.raises(RuntimeError):
        adapter.add_pair(2, 0)  # the current pair must be frozen first


def test_span_init_starts_inside_the_stored_rows_with_the_random_draws_norms():
    """pair_init='span' (issue 19(d)): each new A row lies in the row span of its slice's stored A, with the norm of
    the draw 'random' makes from the same random stream; before anything is stored it is that draw."""
    g = torch.Generator().manual_seed(3)
    spans, plain = [], []
    for init, out in (("span", spans), ("random", plain)):
        adapter, mags = make_adapter(seed=5)
        torch.manual_seed(11)
        adapter.add_pair(2, mags.append(0.8))
        PAIR_STARTS[init](adapter)
        out.append(adapter.lora_A.detach().clone())
        with torch.no_grad():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g, dtype=torch.float64))
        adapter.freeze_pair()
        adapter.add_pair(3, mags.append(0.8))
        PAIR_STARTS[init](adapter)
        out.append(adapter.lora_A.detach().clone())
        stored = adapter.dir_A.clone()
        g = torch.Generator().manual_seed(3)
    assert torch.equal(spans[0], plain[0])  # nothing stored yet: the draw itself
    new, draw = spans[1], plain[1]
    assert not torch.allclose(new, draw)
    torch.testing.assert_close(new.norm(dim=2), draw.norm(dim=2))
    for s in range(2):
        q, _ = torch.linalg.qr(stored[s].T)
        outside = new[s] - (new[s] @ q) @ q.T
        assert outside.norm() < 1e-10 * new[s].norm()
        assert (draw[s] - (draw[s] @ q) @ q.T).norm() > 0.1 * draw[s].norm()  # the random draw is not in it


def test_pair_init_is_an_sdlora_option_off_by_default():
    from avalanche_sdlora.options import SDLoRAOptions

    assert SDLoRAOptions().pair_init == "random"
    with pytest.raises(ValueError, match="pair_init must be one of 'random', 'span', got 'orthogonal'"):
        SDLoRAOptions(pair_init="orthogonal")
