"""Building the adapted ViT, task continuity, merging and export to a plain timm model."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_IMG, randomize_current_pair

from avalanche_sdlora import SDLoRAQKV


def one_task_model(tiny_vit, classes: list[int], seed: int, **kwargs):
    """Head rows for ``classes`` and the first task's pair, random (seeded by ``seed``) so its update is non-zero."""
    model = tiny_vit(**kwargs)
    model.head.add_classes(classes)
    model.add_task()
    randomize_current_pair(model, seed=seed)
    return model


def two_task_model(tiny_vit, **kwargs):
    """Task 0 frozen into a direction, task 1 still training; non-trivial alphas and head rows."""
    model = one_task_model(tiny_vit, [0, 1, 2], seed=1, **kwargs)
    model.freeze_task()
    model.head.add_classes([3, 4])
    model.add_task(reset_alphas=False)
    randomize_current_pair(model, seed=2)
    with torch.no_grad():
        model.magnitudes.alpha.copy_(torch.tensor([1.3, 0.6]))
    return model


def test_build_wraps_every_qkv_and_freezes_backbone(tiny_vit):
    model = tiny_vit()
    assert len(model.adapters) == len(model.backbone.blocks) == 12
    assert all(isinstance(b.attn.qkv, SDLoRAQKV) for b in model.backbone.blocks)
    assert model.trainable_params() == 0  # nothing to train before the first task
    model.add_task(rank=5)
    # the shared magnitudes are one object, one entry
    assert all(a.magnitudes is model.magnitudes for a in model.adapters)
    assert [n for n, _ in model.named_parameters() if "alpha" in n] == ["magnitudes.alpha"]
    a0 = model.adapters[0]
    assert a0.lora_A.shape == (2, 5, 192) and a0.lora_B.shape == (2, 192, 5)  # q and v of width 192
    assert model.trainable_params() == 12 * 2 * 5 * (192 + 192) + 1


def test_alpha_has_one_entry_per_task(tiny_vit):
    model = tiny_vit()
    for t in range(4):
        model.add_task()
        assert len(model.magnitudes) == t + 1 == model.magnitudes.alpha.numel()
        model.freeze_task()
        assert model.num_directions == t + 1
    assert all(a.dir_slot.tolist() == [k for k in range(4) for _ in range(4)] for a in model.adapters)


def test_new_task_starts_where_previous_ended(tiny_vit, images):
    model = one_task_model(tiny_vit, [0, 1], seed=1)
    with torch.no_grad():
        model.magnitudes.alpha.fill_(1.7)
        model.freeze_task()
        y_frozen = model(images)
        model.add_task(reset_alphas=False)
        y_new = model(images)
    torch.testing.assert_close(y_new, y_frozen, rtol=0, atol=1e-6)  # B = 0, old alphas untouched
    assert torch.count_nonzero(model.adapters[0].lora_B) == 0
    # With reset_alphas=True the old magnitude changes (1.7 -> 0.8), and so does the output:
    model.freeze_task()
    model.add_task(reset_alphas=True)
    with torch.no_grad():
        assert not torch.allclose(model(images), y_frozen, atol=1e-4)


def test_freeze_keeps_output_when_current_pair_is_normalised(tiny_vit, images):
    # The paper's form (normalize_current=True, Frobenius directions): freezing must not move the output.
    model = one_task_model(tiny_vit, [0, 1], seed=3, normalize_current=True, direction_norm="frobenius")
    with torch.no_grad():
        y_end = model(images)
        model.freeze_task()
        torch.testing.assert_close(model(images), y_end, rtol=0, atol=1e-5)


def test_merge_unmerge_agree(tiny_vit, images):
    model = two_task_model(tiny_vit)
    base = [a.base_layer.weight.clone() for a in model.adapters]
    with torch.no_grad():
        y = model(images)
        model.merge()
        assert all(a.merged for a in model.adapters)
        assert not torch.equal(model.adapters[0].base_layer.weight, base[0])
        y_merged = model(images)
        model.unmerge()
        y_unmerged = model(images)
    torch.testing.assert_close(y_merged, y, rtol=0, atol=1e-5)
    torch.testing.assert_close(y_unmerged, y, rtol=0, atol=1e-5)
    for a, w in zip(model.adapters, base):
        torch.testing.assert_close(a.base_layer.weight, w, rtol=0, atol=1e-6)


def test_export_loads_into_plain_timm_model(tiny_vit, images):
    model = two_task_model(tiny_vit)
    with torch.no_grad():
        y = model(images)
    sd = model.export_timm_state_dict()
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=model.head.num_classes,
                              img_size=TINY_IMG)
    plain.load_state_dict(sd, strict=True)
    plain.eval()
    with torch.no_grad():
        y_plain = plain(images)
    assert y_plain.shape == y.shape == (3, 5)
    torch.testing.assert_close(y_plain, y, rtol=0, atol=1e-5)
    # The update is folded in: without it the logits differ.
    sd_base = dict(sd)
    for i, a in enumerate(model.adapters):
        sd_base[f"blocks.{i}.attn.qkv.weight"] = a.base_layer.weight
    plain.load_state_dict(sd_base, strict=True)
    with torch.no_grad():
        assert not torch.allclose(plain(images), y, atol=1e-3)
    # Exporting a merged model must not add the update twice.
    model.merge()
    sd_merged = model.export_timm_state_dict()
    assert sd_merged.keys() == sd.keys()
    for k in sd:
        torch.testing.assert_close(sd_merged[k], sd[k], rtol=0, atol=1e-6)


def test_export_with_gaps_in_seen_classes(tiny_vit, images):
    # Classes seen out of order: rows of unseen ids are masked, seen logits match.
    model = one_task_model(tiny_vit, [4, 1], seed=4)
    with torch.no_grad():
        y = model(images)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=TINY_IMG)
    plain.load_state_dict(model.export_timm_state_dict(), strict=True)
    with torch.no_grad():
        y_plain = plain.eval()(images)
    torch.testing.assert_close(y_plain[:, [1, 4]], y[:, [1, 4]], rtol=0, atol=1e-5)
    assert torch.equal(y_plain.argmax(1), y.argmax(1))


def reloaded(model, tiny_vit, images):
    """A fresh model loaded from ``model``'s state dict, after checking that it gives ``model``'s logits."""
    with torch.no_grad():
        y = model(images)
    fresh = tiny_vit(seed=0)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), y, rtol=0, atol=1e-6)
    return fresh


def test_state_dict_round_trip(tiny_vit, images):
    model = two_task_model(tiny_vit)
    model.freeze_task()
    fresh = reloaded(model, tiny_vit, images)
    assert len(fresh.magnitudes) == 2 and fresh.num_directions == 2


def test_state_dict_round_trip_mid_task(tiny_vit, images):
    # A checkpoint taken while a pair is training restores the pair and its magnitude slot.
    fresh = reloaded(two_task_model(tiny_vit), tiny_vit, images)
    fresh.freeze_task()
    assert fresh.adapters[0].dir_slot.tolist() == [0] * 4 + [1] * 4


def test_head_init_zeros_starts_new_classes_at_logit_zero_and_keeps_old_rows():
    from avalanche_sdlora.head import FrozenPastHead

    head = FrozenPastHead(8, init="zeros")
    head.add_classes([0, 1])
    with torch.no_grad():
        head.weights[0].add_(1.0)
    head.add_classes([2])
    logits = head(torch.randn(5, 8))
    assert torch.equal(logits[:, 2], torch.zeros(5))  # the new class starts at exactly 0
    assert not torch.equal(logits[:, 0], torch.zeros(5))  # the old rows kept their trained values
    assert not head.weights[0].requires_grad and head.weights[1].requires_grad
    linear = FrozenPastHead(8)
    linear.add_classes([0])
    assert linear.weights[0].abs().sum() > 0  # nn.Linear's default init, the authors'
    with pytest.raises(ValueError, match="unknown head init 'orthogonal'"):
        FrozenPastHead(8, init="orthogonal")


def test_sdlora_vit_passes_head_init(tiny_vit):
    assert tiny_vit(head_init="zeros").head.init == "zeros"


def test_sdlora_vit_passes_pair_init_to_every_adapter(tiny_vit):
    """pair_init='span': the second task's A of every adapter starts in the row span of the first task's A."""
    model = tiny_vit(pair_init="span")
    model.add_task()
    model.freeze_task()
    model.add_task()
    for a in model.adapters:
        for s in range(2):
            q, _ = torch.linalg.qr(a.dir_A[s].T.double())
            A = a.lora_A[s].detach().double()
            assert (A - (A @ q) @ q.T).norm() < 1e-5 * A.norm()
    plain = tiny_vit()  # the default: LoRA's random A, not in that span
    plain.add_task()
    plain.freeze_task()
    plain.add_task()
    a = plain.adapters[0]
    q, _ = torch.linalg.qr(a.dir_A[0].T.double())
    A = a.lora_A[0].detach().double()
    assert (A - (A @ q) @ q.T).norm() > 0.5 * A.norm()
