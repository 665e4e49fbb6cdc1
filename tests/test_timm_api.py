"""The model by timm's and PEFT's names: any name timm.create_model takes, a backbone with a classifier, and
merge_and_unload()/to_timm() giving a plain timm VisionTransformer with the same logits (issue 33)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import randomize_current_pair
from timm.models.vision_transformer import VisionTransformer

import avalanche_sdlora
from avalanche_sdlora import SDLoRAViT, sdlora_vit
from avalanche_sdlora import model as model_module
from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.adapter_format import CONFIG_FILE

IMG = 32


def _trained(**kwargs) -> SDLoRAViT:
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2, **kwargs)
    for task, classes in enumerate(([0, 1], [2, 4])):  # class 3 has no row: its logit is mask_value
        model.add_task()
        randomize_current_pair(model, seed=task)
        model.head.add_classes(classes)
        if task == 0:
            model.freeze_task()
    return model.eval()


@pytest.mark.skipif(default_asset("vit_tiny_patch16_224.safetensors") is None, reason="shared ViT-Tiny weights absent")
def test_a_pretrained_tag_is_accepted_and_finds_the_local_weights():
    plain = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, pretrained=True)
    tagged = sdlora_vit("vit_tiny_patch16_224.augreg_in21k_ft_in1k", img_size=IMG, pretrained=True)  # the default tag
    a, b = plain.state_dict(), tagged.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tags_are_recorded_and_bad_names_refused_in_one_sentence(tmp_path):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224.augreg_in21k", img_size=IMG)  # another tag, random weights
    folder = model.save_pretrained(tmp_path / "a")
    assert '"timm_name": "vit_tiny_patch16_224.augreg_in21k"' in (folder / CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match=r"timm cannot build 'vit_tiny_patch16_224.nosuchtag' \(Invalid pretrained tag"):
        sdlora_vit("vit_tiny_patch16_224.nosuchtag", img_size=IMG)
    with pytest.raises(ValueError, match=r"unknown timm model 'vit_tiny_patch16_22'; try one of \['vit_tiny_patch16_224'"):
        sdlora_vit("vit_tiny_patch16_22", img_size=IMG)


def test_hf_hub_names_reach_timm_and_a_failed_download_is_one_sentence(monkeypatch):
    calls, real = [], timm.create_model

    def fake_create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        if pretrained:
            raise OSError("offline: no cached files")
        return real("vit_tiny_patch16_224", pretrained=False, **kwargs)

    monkeypatch.setattr(model_module.timm, "create_model", fake_create)
    sdlora_vit("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", img_size=IMG)
    with pytest.raises(FileNotFoundError, match=r"no local weights for 'hf-hub:timm/.*' and timm could not load them "
                                                r"\(offline: no cached files\); pass checkpoint=PATH"):
        sdlora_vit("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", img_size=IMG, pretrained=True)
    assert calls == [("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", False),
                     ("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k", True)]


def test_a_random_backbone_is_never_silent():
    with pytest.warns(UserWarning, match=r"the backbone 'vit_tiny_patch16_224' has random weights \(pretrained=False"):
        sdlora_vit("vit_tiny_patch16_224", img_size=IMG)


def test_a_backbone_with_a_classifier_is_reset_and_then_trains_and_predicts():
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", img_size=IMG)  # 1000-class head, as timm builds it
    with pytest.warns(UserWarning, match="the backbone has a 1000-class classifier; .* reset"):
        model = SDLoRAViT(backbone)
    assert backbone.num_classes == 0 and isinstance(backbone.head, torch.nn.Identity)
    model.add_task()
    model.head.add_classes([0, 1, 2])
    out = model(torch.randn(2, 3, IMG, IMG))  # crashed with a shape error in forward
    assert out.shape == (2, 3)


@pytest.mark.parametrize("merged", [False, True])
def test_merge_and_unload_gives_a_timm_vit_with_the_same_logits(merged):
    model = _trained()
    x = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
        if merged:
            model.merge()
        rng = torch.get_rng_state()
        plain = model.merge_and_unload()
        assert torch.equal(torch.get_rng_state(), rng)  # the new head's init did not draw from the caller's stream
        got = plain.eval()(x)
    assert type(plain) is VisionTransformer and plain.num_classes == 5
    assert not any("lora" in n or "dir_" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(got[:, 3] == -1000.0)  # a class without rows: mask_value, as in the SD-LoRA head
    # The SD-LoRA model is left as it was; the timm model is independent of it.
    assert model.merged == merged and all(p.requires_grad for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    reloaded = timm.create_model("vit_tiny_patch16_224", img_size=IMG, num_classes=5)
    reloaded.load_state_dict(model.export_timm_state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), got)


def test_the_public_names_are_at_the_root_and_the_package_is_typed():
    for name in ("save_checkpoint", "load_checkpoint", "CheckpointPlugin", "AverageAnytimeAccuracy",
                 "average_anytime_accuracy", "split_cifar100", "paper_benchmark", "imagenet_r", "SDLoRAOptions"):
        assert name in avalanche_sdlora.__all__ and hasattr(avalanche_sdlora, name)
    assert (Path(avalanche_sdlora.__file__).parent / "py.typed").is_file()
    assert callable(SDLoRAViT.from_pretrained) and callable(SDLoRAViT.save_pretrained)
