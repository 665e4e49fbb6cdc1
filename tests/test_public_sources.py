"""CIFAR-100 and ViT weights without the project's assets (avalanche_sdlora.public_sources, benchmarks.inputs):
offline refusals naming where to put what, torchvision's folder converted to the npz the loaders read, and the
download paths with the network call replaced (torchvision's download and md5 check, timm's pretrained fetch)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from safetensors.torch import load_file

from avalanche_sdlora import create_backbone, public_sources
from avalanche_sdlora.data import load_cifar100
from benchmarks import inputs

PER_CLASS = {"train": 2, "test": 1}


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """No assets (an empty $SDLORA_ASSETS) and an empty cache: the state of a fresh machine."""
    (tmp_path / "assets").mkdir()
    monkeypatch.setenv("SDLORA_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("SDLORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write_cifar_folder(root: Path) -> dict[str, np.ndarray]:
    """A small folder in torchvision's cifar-100-python format (its pickles), every class present."""
    folder = root / tv_cifar.CIFAR100.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    written = {}
    for split, n in PER_CLASS.items():
        labels = np.repeat(np.arange(100), n)
        data = rng.randint(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels.tolist()}, f)
        written[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    return written


@pytest.fixture
def fake_torchvision(monkeypatch):
    """torchvision's download writes the small folder instead of fetching; its md5 check only sees the files."""
    calls = []

    def download(self):
        calls.append(self.root)
        _write_cifar_folder(Path(self.root))

    monkeypatch.setattr(tv_cifar.CIFAR100, "download", download)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    return calls


def test_offline_without_anything_local_names_the_places(bare):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 not found \(downloads are off\): put cifar100.npz in "
                                                r"\$SDLORA_ASSETS, or torchvision's cifar-100-python folder in "):
        public_sources.cifar100_npz(download=False)
    with pytest.raises(FileNotFoundError, match=r"no weights for 'vit_tiny_patch16_224' \(downloads are off\)"):
        public_sources.vit_weights("vit_tiny_patch16_224", download=False)


def test_the_assets_folder_comes_first(monkeypatch, tmp_path):
    (tmp_path / "cifar100.npz").write_bytes(b"x")
    monkeypatch.setenv("SDLORA_ASSETS", str(tmp_path))
    assert public_sources.cifar100_npz(download=False) == tmp_path / "cifar100.npz"


def test_download_then_convert_once_then_read_from_the_cache(bare, fake_torchvision):
    said = []
    npz = public_sources.cifar100_npz(say=said.append)
    assert fake_torchvision == [str(bare)] and npz == bare / "cifar100.npz"
    assert "downloading torchvision's cifar-100-python.tar.gz (161 MB, md5-checked) into" in said[0]
    written = _write_cifar_folder(bare / "elsewhere")  # the same arrays the fake download wrote
    arrays = load_cifar100(npz)  # the loader's own checks pass: uint8 images, labels 0..99
    for split in ("train", "test"):
        assert np.array_equal(arrays[f"x_{split}"], written[split][0])
        assert np.array_equal(arrays[f"y_{split}"], written[split][1])
    assert public_sources.cifar100_npz(say=said.append) == npz and len(fake_torchvision) == 1 and len(said) == 2


def test_a_failed_download_says_what_to_do(bare, monkeypatch):
    def offline(self):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar.CIFAR100, "download", offline)
    with pytest.raises(FileNotFoundError, match="the download failed: Temporary failure in name resolution"):
        public_sources.cifar100_npz(say=lambda s: None)


def test_the_harness_reads_a_torchvision_folder_given_as_data(bare, fake_torchvision, tmp_path):
    _write_cifar_folder(tmp_path / "mine")
    npz = inputs.resolve_data(str(tmp_path / "mine"))
    assert npz == str(bare / "cifar100.npz") and fake_torchvision == []  # converted, nothing downloaded
    assert load_cifar100(npz)["x_test"].shape == (100, 32, 32, 3)
    with pytest.raises(SystemExit, match=r"--data '.*nowhere' is not a file \(nor a folder\); pass the CIFAR-100 npz"):
        inputs.resolve_data(str(tmp_path / "nowhere"))


def test_weights_are_fetched_through_timm_once_and_load_as_a_backbone(bare, monkeypatch):
    calls = []
    real = public_sources.timm.create_model

    def create_model(name, pretrained=False, **kw):
        calls.append((name, pretrained))
        torch.manual_seed(0)
        return real(name, pretrained=False, **kw)  # the hub download replaced by random weights

    monkeypatch.setattr(public_sources.timm, "create_model", create_model)
    path = public_sources.vit_weights("vit_tiny_patch16_224", say=lambda s: None)
    assert calls == [("vit_tiny_patch16_224", True)] and path == bare / "vit_tiny_patch16_224.safetensors"
    state = load_file(path)
    assert not any(k.startswith("head") for k in state)
    backbone = create_backbone("vit_tiny_patch16_224", checkpoint=path)
    assert torch.equal(backbone.state_dict()["cls_token"], state["cls_token"])
    assert inputs.resolve_checkpoint("vit_tiny_patch16_224", None) == str(path)
    assert [c for c in calls if c[1]] == [("vit_tiny_patch16_224", True)]  # fetched once; later calls read the file


def test_the_harness_refuses_in_one_line_when_timm_cannot_fetch(bare, monkeypatch):
    def offline(name, pretrained=False, **kw):
        raise RuntimeError("offline")

    monkeypatch.setattr(public_sources.timm, "create_model", offline)
    with pytest.raises(SystemExit, match=r"error: no weights for 'vit_tiny_patch16_224' \(timm's download failed: "
                                         r"offline\): put vit_tiny_patch16_224.safetensors in \$SDLORA_ASSETS"):
        inputs.resolve_checkpoint("vit_tiny_patch16_224", None)
