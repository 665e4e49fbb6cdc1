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


def test_a_long_resize_shows_progress_and_a_short_one_does_not(monkeypatch, capsys):
    """A resize longer than PROGRESS_DELAY_S shows what it does on stderr (lowered to 0 here: every resize is long);
    one shorter stays silent."""
    x = _images(10)
    monkeypatch.setattr(data, "_CACHE", {})
    data.resize_images(x, 16)
    assert capsys.readouterr().err == ""  # 10 tiny images: far below the delay
    monkeypatch.setattr(data, "_CACHE", {})
    monkeypatch.setattr(data, "PROGRESS_DELAY_S", 0)
    monkeypatch.delenv("SDLORA_IMAGE_CACHE", raising=False)
    data.resize_images(x, 16, batch=4)
    err = capsys.readouterr().err
    assert "resizing 10 images to 16 px (once per process; $SDLORA_IMAGE_CACHE=DIR keeps them on disk" in err
    assert "10/10" in err


def test_a_cache_file_of_another_shape_is_a_clear_error(tmp_path, monkeypatch):
    x = _images()
    monkeypatch.setattr(data, "_CACHE", {})
    data.resize_images(x, 16, cache_dir=tmp_path)
    (f,) = tmp_path.glob("*.npy")
    np.save(f, np.zeros((6, 3, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(data, "_CACHE", {})
    with pytest.raises(ValueError, match="delete it"):
        data.resize_images(x, 16, cache_dir=tmp_path)


def test_split_cifar100_keeps_its_images_in_the_cache_it_is_given(tmp_path, monkeypatch):
    """The harness passes the folder as an argument (no environment variable set around the call)."""
    monkeypatch.delenv("SDLORA_IMAGE_CACHE", raising=False)
    monkeypatch.setattr(data, "_CACHE", {})
    npz = _npz(tmp_path / "c.npz")
    kw = dict(n_experiences=2, img_size=16, path=npz, classes=[0, 1, 2, 3], augment=False)
    bench = data.split_cifar100(image_cache=tmp_path / "cache", **kw)
    assert sorted(f.name.split("-")[2:] for f in (tmp_path / "cache").glob("*.npy")) == [["4", "16px.npy"], ["8", "16px.npy"]]
    monkeypatch.setattr(data, "_CACHE", {})
    plain = data.split_cifar100(**kw)  # no cache: the same images
    for a, b in zip(bench.train_stream, plain.train_stream):
        assert torch.equal(torch.stack([x for x, *_ in a.dataset]), torch.stack([x for x, *_ in b.dataset]))


# ---------------------------------------------------------------------- the npz is checked before anything trains
def _npz(path, n_per_class=2, n_classes=100, **override):
    """A small npz in the shared file's layout: uint8 HWC images, int64 labels in shuffled file order."""
    rs = np.random.RandomState(1)
    arrays = {}
    for split, n in (("train", n_per_class), ("test", 1)):
        y = rs.permutation(np.repeat(np.arange(n_classes), n)).astype(np.int64)
        arrays[f"x_{split}"] = rs.randint(0, 256, size=(len(y), 8, 8, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = y
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda x: (x / 255.0).astype(np.float32),
     r"key x_train is float32 in \[0, 1\], not uint8 pixels 0\.\.255; convert it with np\.round\(x \* 255\)"),
    (lambda x: np.full(x.shape, np.nan, np.float32), r"key x_train holds \d+ non-finite values \(NaN or inf\)"),
    (lambda x: x.astype(np.int64) * 2, r"key x_train holds values in \[0, \d+\], outside 0\.\.255"),
    (lambda x: x.astype(np.float64), r"key x_train is float64 in \[0, 255\], not uint8; convert it with np\.round\(x\)"),
])
def test_images_that_are_not_uint8_pixels_are_refused(tmp_path, make, message):
    x = np.random.RandomState(0).randint(0, 256, size=(200, 8, 8, 3), dtype=np.uint8)
    p = _npz(tmp_path / "bad.npz", x_train=make(x))
    with pytest.raises(ValueError, match=message) as err:
        data.load_cifar100(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("labels, message", [
    (lambda y: np.where(y == 0, 100, y), r"key y_train holds 2 labels outside 0\.\.99 \(for instance 100\)"),
    (lambda y: np.where(y == 0, -1, y), r"key y_train holds 2 labels outside 0\.\.99 \(for instance -1\)"),
    (lambda y: y.astype(np.float32), r"key y_train has dtype float32; labels must be integers 0\.\.99"),
])
def test_labels_outside_the_class_count_are_refused(tmp_path, labels, message):
    y = np.random.RandomState(1).permutation(np.repeat(np.arange(100), 2)).astype(np.int64)
    with pytest.raises(ValueError, match=message):
        data.load_cifar100(_npz(tmp_path / "bad.npz", y_train=labels(y)))


def test_a_truncated_npz_names_the_file_and_the_fix(tmp_path):
    p = _npz(tmp_path / "cut.npz")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.npz' is not a readable npz file, truncated or damaged \(BadZipFile.*"
                                         r"pass load_cifar100\(path=\.\.\.\) or split_cifar100\(path=\.\.\.\) a complete"):
        data.load_cifar100(p)


def test_a_missing_npz_names_the_argument_not_a_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz'\. Pass the right path with load_cifar100\(path=\.\.\.\)") as err:
        data.load_cifar100(tmp_path / "nope.npz")
    assert "--" not in str(err.value)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"\x93NUMPY garbage" + b[14:]])
def test_a_truncated_or_damaged_image_cache_names_the_file(tmp_path, monkeypatch, damage):
    x = _images()
    monkeypatch.setattr(data, "_CACHE", {})
    data.resize_images(x, 16, cache_dir=tmp_path)
    (f,) = tmp_path.glob("*.npy")
    f.write_bytes(damage(f.read_bytes()))
    monkeypatch.setattr(data, "_CACHE", {})
    with pytest.raises(ValueError, match=rf"image cache '{f}' is truncated or damaged .*; delete it"):
        data.resize_images(x, 16, cache_dir=tmp_path)


# ---------------------------------------------------------------------- Avalanche 0.6 API, same experiences as before
def _old_benchmark(path, n_experiences, train_per_class, test_per_class, img_size, classes=None, augment=True):
    """The benchmark as the code before the 0.6 API built it (``nc_benchmark``), for comparison."""
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from torchvision.transforms import v2

    arrays = data.load_cifar100(path)
    order = data.class_order(100, 1993)
    if classes is not None:
        order = [c for c in order if c in set(classes)]

    def subset(split, per_class):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        keep = np.flatnonzero(np.isin(y, order))
        keep = keep[data.first_per_class(y[keep], per_class)]
        return data.ImageTensorDataset(data.resize_images(x[keep], img_size), y[keep])

    return nc_benchmark(subset("train", train_per_class), subset("test", test_per_class), n_experiences=n_experiences,
                        task_labels=False, shuffle=False, fixed_class_order=order, class_ids_from_zero_from_first_exp=True,
                        train_transform=v2.RandomHorizontalFlip() if augment else None, eval_transform=None)


def _samples(dataset, seed=None):
    if seed is not None:
        torch.manual_seed(seed)  # the flip draws from the torch RNG, sample by sample
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("kw", [dict(n_experiences=10), dict(n_experiences=3, classes=[3, 17, 42, 56, 88, 91]),
                                dict(n_experiences=2, classes=list(range(4)), augment=False)])
def test_new_api_gives_the_same_experiences_sample_by_sample(tmp_path, kw):
    path = _npz(tmp_path / "c.npz", n_per_class=3)
    common = dict(train_per_class=2, test_per_class=None, img_size=8, **kw)
    old, new = _old_benchmark(path, **common), data.split_cifar100(path=path, **common)
    assert len(new.train_stream) == len(new.test_stream) == kw["n_experiences"]
    for stream in ("train_stream", "test_stream"):
        for e_old, e_new in zip(getattr(old, stream), getattr(new, stream)):
            assert e_new.current_experience == e_old.current_experience
            assert sorted(e_new.classes_in_this_experience) == sorted(e_old.classes_in_this_experience)
            assert e_new.task_label == 0
            for group, seed in (("eval", None), ("train", 5)):
                a = _samples(getattr(e_old.dataset, group)(), seed)
                b = _samples(getattr(e_new.dataset, group)(), seed)
                assert len(a) == len(b)
                for (xa, ya, ta), (xb, yb, tb) in zip(a, b):
                    assert torch.equal(xa, xb) and ya == yb and ta == tb


def test_a_class_subset_is_relabelled_from_zero_in_protocol_order(tmp_path):
    path = _npz(tmp_path / "c.npz")
    subset = [3, 17, 42, 56, 88, 91]
    bm = data.split_cifar100(path=path, n_experiences=3, train_per_class=2, img_size=8, classes=subset)
    order = [c for c in data.class_order(100, 1993) if c in subset]
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == [[0, 1], [2, 3], [4, 5]]
    for e in bm.train_stream:  # each remapped label t is the protocol's t-th class of the subset
        ds = e.dataset.eval()
        images = {int(ds[i][1]): ds[i][0] for i in range(len(ds))}
        arrays = data.load_cifar100(path)
        for label, image in images.items():
            originals = arrays["x_train"][arrays["y_train"] == order[label]]
            resized = data.resize_images(originals, 8).float().div(127.5).sub(1.0)
            assert any(torch.equal(image, r) for r in resized)
    with pytest.raises(ValueError, match=r"classes must be CIFAR-100 class ids 0\.\.99, got \[150\]"):
        data.split_cifar100(path=path, n_experiences=1, classes=[3, 150])


def test_experience_class_lists_are_sorted_lists_as_before(tmp_path):
    """Avalanche's own L2P feeds classes_in_this_experience to np.setdiff1d, which needs a sequence, not a set."""
    path = _npz(tmp_path / "c.npz")
    common = dict(n_experiences=3, train_per_class=2, test_per_class=None, img_size=8, classes=list(range(6)))
    old, new = _old_benchmark(path, **common), data.split_cifar100(path=path, **common)
    for e_old, e_new in zip(old.train_stream, new.train_stream):
        for attr in ("classes_in_this_experience", "previous_classes", "classes_seen_so_far", "future_classes"):
            assert getattr(e_new, attr) == sorted(getattr(e_old, attr)), attr
