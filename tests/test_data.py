"""The resized-image cache: on disk when asked, identical to resizing in memory, and refusing a wrong file."""

import numpy as np
import pytest
import torch

from avalanche_sdlora import data


def _images(n: int = 6) -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


def test_disk_cache_matches_memory_and_is_reused(tmp_path, monkeypatch):
    x = _images()
    monkeypatch.setattr(data, "_CACHE", {})
    in_memory = data.resize_images(x, 16).clone()
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.setenv("SDLORA_IMAGE_CACHE", str(tmp_path))
    first = data.resize_images(x, 16)
    files = list(tmp_path.glob("images-*-6-16px.npy"))
    assert len(files) == 1 and torch.equal(first, in_memory)
    monkeypatch.setattr(data, "_CACHE", {})  # a new process: reads the file instead of resizing
    monkeypatch.setattr(data.F, "interpolate", lambda *a, **k: pytest.fail("resized again"))
    assert torch.equal(data.resize_images(x, 16), in_memory)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_cache_file_of_another_shape_is_a_clear_error(tmp_path, monkeypatch):
    x = _images()
    monkeypatch.setattr(data, "_CACHE", {})
    data.resize_images(x, 16, cache_dir=tmp_path)
    (f,) = tmp_path.glob("*.npy")
    np.save(f, np.zeros((6, 3, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(data, "_CACHE", {})
    with pytest.raises(ValueError, match="delete it"):
        data.resize_images(x, 16, cache_dir=tmp_path)
