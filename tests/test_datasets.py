"""The paper's benchmark loaders on synthetic trees in each layout: class counts, split sizes, class order, transforms,
every error message, md5, and one SD-LoRA experience fed by a loaded benchmark."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import TINY_IMG
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from avalanche_sdlora import SDLoRA
from avalanche_sdlora.datasets import (PAPER_BENCHMARKS, PAPER_PROTOCOLS, class_order, cifar100, cub200, domainnet,
                                       imagenet_a, imagenet_r, paper_benchmark, sdlora_transforms, timm_normalization)
from avalanche_sdlora.datasets.transforms import eval_resize_size

torch.set_num_threads(1)
WNIDS = ["n01443537", "n01484850", "n01494475", "n01498041", "n01514859", "n01518878"]


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (14, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def aper_tree(root: Path, classes=WNIDS, n_train: int = 3, n_test: int = 2) -> Path:
    """<root>/{train,test}/<class>/<k>.jpg, as the APER/PILOT archives unpack."""
    for split, n in (("train", n_train), ("test", n_test)):
        for ci, c in enumerate(classes):
            for k in range(n):
                _jpeg(root / split / c / f"{split}_{k}.jpg", seed=100 * ci + k)
    return root


def coda_tree(root: Path, lists: Path, classes=WNIDS, n_train: int = 3, n_test: int = 2, *, marker="imagenet-r",
              domains: tuple[str, ...] = (), name: str = "imagenet-r") -> Path:
    """An unsplit tree plus CODA-Prompt-style YAML lists (paths 'data/<marker>/...', targets in listing order)."""
    lists.mkdir(parents=True, exist_ok=True)
    targets = {c: (7 * i + 3) % len(classes) for i, c in enumerate(classes)}  # not the sorted order, as CODA's
    for split, n in (("train", n_train), ("test", n_test)):
        data, tgt = [], []
        for ci, c in enumerate(classes):
            for d in domains or ("",):
                for k in range(n):
                    rel = Path(d, c, f"{split}_{k}.jpg") if d else Path(c, f"{split}_{k}.jpg")
                    _jpeg(root / rel, seed=100 * ci + k)
                    data.append(f"data/{marker}/{rel.as_posix()}")
                    tgt.append(targets[c])
        (lists / f"{name}_{split}.yaml").write_text(yaml.safe_dump({"data": data, "targets": tgt}))
    return root


def _class_of_label(bench) -> dict[int, str]:
    info = bench.info
    return {label: info.class_names[orig] for label, orig in enumerate(info.class_order)}


# ---------------------------------------------------------------- class order and remapping


def test_class_order_is_numpys_seeded_permutation_as_in_the_authors_log():
    np.random.seed(1993)
    assert class_order(200, 1993) == np.random.permutation(200).tolist()
    # SD-LoRA-CL logs/InA.log (seed 1993, 200 classes) prints the order starting 168, 136, 51, 9, 183, 101, ...
    assert class_order(200, 1993)[:8] == [168, 136, 51, 9, 183, 101, 171, 99]
    assert class_order(100, 1994)[:6] == [72, 6, 33, 96, 60, 94]  # logs/C100.log, seed 1994


def test_aper_folders_give_class_order_remapped_labels_and_sizes(tmp_path):
    root = aper_tree(tmp_path / "imagenet-r")
    bench = imagenet_r(root, n_experiences=3, img_size=TINY_IMG, n_classes=6)
    info = bench.info
    assert (info.name, info.split, info.n_classes, info.n_experiences) == ("imagenet-r", "aper", 6, 3)
    assert info.class_names == tuple(sorted(WNIDS)) and info.class_order == tuple(class_order(6, 1993))
    assert (info.train_size, info.test_size) == (18, 12) and info.expected_sizes == (24000, 6000)
    for t, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert set(tr.classes_in_this_experience) == set(te.classes_in_this_experience) == {2 * t, 2 * t + 1}
        assert (len(tr.dataset), len(te.dataset)) == (6, 4)
    # label i is the class class_order[i]: every item's file lies in that class's folder
    folders = _class_of_label(bench)
    for exp in bench.train_stream:
        for sub in _path_datasets(exp.dataset):
            for path, label in sub.imgs:
                assert Path(path).parent.name == folders[label]


def _path_datasets(ds):
    """The Avalanche PathsDataset(s) under an experience's dataset (for checking which file got which label)."""
    from avalanche.benchmarks.utils.datasets_from_filelists import PathsDataset
    found, todo = [], [ds]
    while todo:
        d = todo.pop()
        if isinstance(d, PathsDataset):
            found.append(d)
        for attr in ("_flat_data", "_datasets", "dataset"):
            sub = getattr(d, attr, None)
            if isinstance(sub, list):
                todo.extend(sub)
            elif sub is not None and sub is not d:
                todo.append(sub)
    assert found, "no PathsDataset found"
    return found


def test_parent_folder_and_sdlora_data_variable_are_accepted(tmp_path, monkeypatch):
    aper_tree(tmp_path / "imagenet-a")
    a = imagenet_a(tmp_path, n_experiences=2, img_size=TINY_IMG, n_classes=6)  # the folder above the archive's
    monkeypatch.delenv("SDLORA_IMAGENET_A", raising=False)
    monkeypatch.setenv("SDLORA_DATA", str(tmp_path))
    b = imagenet_a(n_experiences=2, img_size=TINY_IMG, n_classes=6)
    assert a.info.root == b.info.root == str(tmp_path / "imagenet-a") and b.info.split == "aper"


def test_coda_lists_read_the_original_tree_with_the_same_classes_per_seed(tmp_path):
    coda = imagenet_r(coda_tree(tmp_path / "imagenet-r", tmp_path / "splits"), split="coda", lists=tmp_path / "splits",
                      n_experiences=2, img_size=TINY_IMG, n_classes=6)
    aper = imagenet_r(aper_tree(tmp_path / "aper"), n_experiences=2, img_size=TINY_IMG, n_classes=6)
    assert coda.info.split == "coda" and (coda.info.train_size, coda.info.test_size) == (18, 12)
    assert coda.info.split_lists == (str(tmp_path / "splits" / "imagenet-r_train.yaml"),
                                     str(tmp_path / "splits" / "imagenet-r_test.yaml")) and aper.info.split_lists == ()
    assert _class_of_label(coda) == _class_of_label(aper)  # CODA's own target ints do not reorder classes
    for exp in coda.test_stream:
        for sub in _path_datasets(exp.dataset):
            for path, label in sub.imgs:
                assert Path(path).is_file() and Path(path).parent.name == _class_of_label(coda)[label]


def test_lists_are_found_beside_the_tree(tmp_path):
    coda_tree(tmp_path / "imagenet-r", tmp_path)  # lists in the tree's parent, as in a CODA-Prompt checkout's data/
    bench = imagenet_r(tmp_path / "imagenet-r", split="coda", n_experiences=3, img_size=TINY_IMG, n_classes=6)
    assert bench.info.n_classes == 6


def test_cub_and_imagenet_a_read_their_archives(tmp_path):
    classes = [f"{i:03d}.Bird_{i}" for i in range(1, 5)]
    cub = cub200(aper_tree(tmp_path / "cub", classes, 2, 1), n_experiences=2, img_size=TINY_IMG, n_classes=4)
    assert (cub.info.name, cub.info.split, cub.info.train_size, cub.info.test_size) == ("cub", "aper", 8, 4)
    assert cub.info.expected_sizes == (9430, 2358)
    ina = imagenet_a(aper_tree(tmp_path / "ina", WNIDS[:4], 1, 1), n_experiences=4, img_size=TINY_IMG, n_classes=4)
    assert ina.info.expected_sizes == (5981, 1519) and len(ina.train_stream) == 4


def test_domainnet_lists_span_domains_and_refuse_quickdraw(tmp_path):
    classes = ["aircraft_carrier", "airplane", "alarm_clock", "ambulance", "angel"]
    root = coda_tree(tmp_path / "DomainNet", tmp_path / "splits", classes, 2, 1, marker="DomainNet",
                     domains=("clipart", "real"), name="domainnet")
    bench = domainnet(root, lists=tmp_path / "splits", img_size=TINY_IMG, n_classes=5)
    info = bench.info
    assert (info.split, info.n_experiences, info.train_size, info.test_size) == ("coda", 5, 20, 10)
    assert info.domains == (("clipart", 10), ("real", 10)) and info.class_names == tuple(classes)
    assert PAPER_BENCHMARKS["domainnet"].n_classes == 345 and 345 // 5 == 69
    coda_tree(tmp_path / "DomainNet", tmp_path / "splits", classes, 1, 1, marker="DomainNet",
              domains=("clipart", "quickdraw"), name="domainnet")
    with pytest.raises(ValueError, match="quickdraw, which CODA-Prompt's lists exclude"):
        domainnet(root, lists=tmp_path / "splits", img_size=TINY_IMG, n_classes=5)


def _cifar_folder(base: Path, per_class: tuple[int, int] = (2, 1)) -> Path:
    folder = base / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, n in zip(("train", "test"), per_class):
        labels = [c for c in range(100) for _ in range(n)]
        data = rng.randint(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{c}" for c in range(100)]}, f)
    return base


def test_cifar100_reads_torchvisions_folder_and_the_npz(tmp_path, monkeypatch):
    base = _cifar_folder(tmp_path / "tv")
    with pytest.raises(ValueError, match="incomplete or corrupted.*cifar-100-python"):
        cifar100(base, img_size=TINY_IMG)  # synthetic files fail torchvision's md5 check
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    bench = cifar100(base / "cifar-100-python", img_size=TINY_IMG)
    info = bench.info
    assert (info.split, info.train_size, info.test_size, info.n_experiences) == ("official", 200, 100, 10)
    assert info.class_names[info.class_order[0]] == f"class{class_order(100, 1993)[0]}"
    assert set(bench.train_stream[9].classes_in_this_experience) == set(range(90, 100))
    x, y, t = bench.test_stream[0].dataset[0]
    assert x.shape == (3, TINY_IMG, TINY_IMG) and 0 <= y < 10 and t == 0

    rng = np.random.RandomState(1)
    ys = (np.arange(100).repeat(2), np.arange(100))
    npz = tmp_path / "cifar100.npz"
    np.savez(npz, x_train=rng.randint(0, 256, (200, 32, 32, 3), dtype=np.uint8), y_train=ys[0],
             x_test=rng.randint(0, 256, (100, 32, 32, 3), dtype=np.uint8), y_test=ys[1])
    bench = cifar100(npz, img_size=TINY_IMG, train_per_class=1)
    assert (bench.info.split, bench.info.train_size, bench.info.test_size) == ("npz", 100, 100)


# ---------------------------------------------------------------- transforms


def test_transforms_follow_sdlora_and_scale_with_img_size(tiny_vit):
    train, test = sdlora_transforms(224)
    rrc, flip = train.transforms[0], train.transforms[1]
    assert isinstance(rrc, v2.RandomResizedCrop) and tuple(rrc.size) == (224, 224) and rrc.scale == (0.05, 1.0)
    assert rrc.ratio == (3 / 4, 4 / 3) and rrc.interpolation == InterpolationMode.BILINEAR and flip.p == 0.5
    resize, crop = test.transforms[0], test.transforms[1]
    assert list(resize.size) == [256] and resize.interpolation == InterpolationMode.BICUBIC
    assert tuple(crop.size) == (224, 224)
    assert eval_resize_size(32) == 36 and eval_resize_size(384) == 438
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (30, 45, 3), dtype=np.uint8))
    for size in (32, 48):
        tr, te = sdlora_transforms(size)
        assert tr(img).shape == te(img).shape == (3, size, size) and type(te(img)) is torch.Tensor
    raw = sdlora_transforms(32)[1](img)
    assert raw.min() >= 0 and raw.max() <= 1  # no normalisation: SD-LoRA's code applies none
    mean, std = timm_normalization(tiny_vit())  # vit_tiny_patch16_224's config: mean = std = 0.5
    assert mean == std == (0.5, 0.5, 0.5)
    norm = sdlora_transforms(32, (mean, std))[1](img)
    assert torch.allclose(norm, raw * 2 - 1, atol=1e-6)


def test_loader_takes_normalization_from_the_model(tmp_path, tiny_vit):
    bench = imagenet_r(aper_tree(tmp_path / "r", WNIDS[:2], 1, 1), n_experiences=1, img_size=TINY_IMG,
                       n_classes=2, model=tiny_vit())
    assert bench.info.normalization == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="not both"):
        imagenet_r(tmp_path / "r", n_experiences=1, n_classes=2, model=tiny_vit(), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="no timm pretrained_cfg"):
        imagenet_r(tmp_path / "r", n_experiences=1, n_classes=2, model=torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- errors


def test_missing_folder_and_no_path_name_the_path_and_the_variables(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"imagenet-r not found at '.*nowhere'.*\{train,test\}/<wnid>"):
        imagenet_r(tmp_path / "nowhere")
    for var in ("SDLORA_IMAGENET_R", "SDLORA_DATA"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError, match=r"root=PATH.*\$SDLORA_IMAGENET_R.*\$SDLORA_DATA.*nothing is "
                                                r"downloaded"):
        imagenet_r()


def test_wrong_layout_points_to_the_split_lists(tmp_path):
    coda_tree(tmp_path / "imagenet-r", tmp_path / "splits")
    with pytest.raises(FileNotFoundError, match=r"has no train/ or test/ folder .*split='coda'.*\{train,test\}"):
        imagenet_r(tmp_path / "imagenet-r")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "test").mkdir()
    _jpeg(tmp_path / "flat" / "train" / "a.jpg", 0)
    with pytest.raises(FileNotFoundError, match=r"'.*flat/train' has no class folders \(images lie directly in it\)"):
        cub200(tmp_path / "flat")


def test_class_count_split_mismatch_and_empty_class_are_errors(tmp_path):
    root = aper_tree(tmp_path / "r", WNIDS[:4], 1, 1)
    with pytest.raises(ValueError, match=r"found 4 classes in '.*r', expected 200.*n_classes"):
        imagenet_r(root)
    (root / "test" / WNIDS[3]).rename(root / "test" / "n99999999")
    with pytest.raises(ValueError, match=r"different classes \(only in train: \['n01498041'\], only in test: "
                                         r"\['n99999999'\]\)"):
        imagenet_r(root, n_classes=None)
    (root / "test" / "n99999999").rename(root / "test" / WNIDS[3])
    for f in (root / "test" / WNIDS[2]).iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=rf"hold no images, e\.g\. '.*test/{WNIDS[2]}'"):
        imagenet_r(root, n_classes=None)


def test_split_list_errors_name_the_list_and_the_entry(tmp_path):
    root = coda_tree(tmp_path / "imagenet-r", tmp_path / "splits")
    kw = dict(split="coda", lists=tmp_path / "splits", n_experiences=2, n_classes=6)
    (root / WNIDS[1] / "test_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 12 entries of '.*imagenet-r_test.yaml' have no file under "
                                                rf"'.*imagenet-r', e\.g\. 'data/imagenet-r/{WNIDS[1]}/test_1.jpg'"):
        imagenet_r(root, **kw)
    _jpeg(root / WNIDS[1] / "test_1.jpg", 0)
    bad = tmp_path / "splits" / "imagenet-r_train.yaml"
    good = bad.read_text()
    bad.write_text(yaml.safe_dump({"images": ["a.jpg"], "labels": [0]}))
    with pytest.raises(ValueError, match=r"not a CODA-Prompt list \(found \['images', 'labels'\]\); expected a YAML "
                                         r"mapping with 'data'"):
        imagenet_r(root, **kw)
    doc = yaml.safe_load(good)
    doc["targets"][0] = (doc["targets"][0] + 1) % 6
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="expected one target per class folder"):
        imagenet_r(root, **kw)
    bad.write_text(good)
    (tmp_path / "splits" / "imagenet-r_test.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"imagenet-r_train.yaml and imagenet-r_test.yaml not found in "
                                                r"'.*splits'.*GT-RIPL/CODA-Prompt"):
        imagenet_r(root, **kw)


def test_bad_arguments_are_named(tmp_path):
    root = aper_tree(tmp_path / "r", WNIDS[:4], 1, 1)
    with pytest.raises(ValueError, match="n_experiences=3 does not divide the 4 classes"):
        imagenet_r(root, n_experiences=3, n_classes=None)
    with pytest.raises(ValueError, match=r"no split 'mine'; choose one of \['aper', 'coda'\]"):
        imagenet_r(root, split="mine")
    with pytest.raises(ValueError, match="unknown protocol 'imagenet-r-7'"):
        paper_benchmark("imagenet-r-7", root)


# ---------------------------------------------------------------- md5 and recorded sizes


def test_archive_md5_is_checked_against_the_recorded_one(tmp_path):
    root = aper_tree(tmp_path / "r", WNIDS[:2], 1, 1)
    archive = tmp_path / "imagenet-r.zip"
    archive.write_bytes(b"not the archive")
    got = hashlib.md5(b"not the archive").hexdigest()
    with pytest.raises(ValueError, match=f"has md5 {got}, expected 730aa3fb9c7d2ec0b6381c6b23040681"):
        imagenet_r(root, n_experiences=1, n_classes=None, archive=archive)
    with pytest.raises(ValueError, match="expected a61312130a589d0ca1a8fca1f2bd3337"):
        imagenet_r(root, split="coda", archive=archive)
    with pytest.raises(FileNotFoundError, match="archive not found"):
        imagenet_r(root, archive=tmp_path / "missing.zip")
    from avalanche_sdlora.datasets.integrity import verify_md5
    assert verify_md5(archive, got, "test") == got


def test_recorded_sizes_warn_or_with_strict_fail(tmp_path):
    root = aper_tree(tmp_path / "r", WNIDS[:2], 1, 1)
    with pytest.warns(UserWarning, match=r"2 train / 2 test images, the recorded split has 24000 / 6000"):
        imagenet_r(root, n_experiences=1, n_classes=None)
    with pytest.raises(ValueError, match=r"recorded split has 24000 / 6000.*strict=True"):
        imagenet_r(root, n_experiences=1, n_classes=None, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a per-class limit is a deliberate subset: nothing to compare
        imagenet_r(root, n_experiences=1, n_classes=None, train_per_class=1)


def test_the_table_records_the_papers_benchmarks():
    got = {name: (b.n_classes, b.task_counts, b.default_split) for name, b in PAPER_BENCHMARKS.items()}
    assert got == {"imagenet-r": (200, (5, 10, 20), "aper"), "imagenet-a": (200, (10,), "aper"),
                   "cub": (200, (10,), "aper"), "domainnet": (345, (5,), "coda"),
                   "cifar100": (100, (10,), "official")}
    sizes = {(n, s): spec.sizes for n, b in PAPER_BENCHMARKS.items() for s, spec in b.splits.items()}
    assert sizes[("imagenet-r", "aper")] == sizes[("imagenet-r", "coda")] == (24000, 6000)
    assert sizes[("imagenet-a", "aper")] == (5981, 1519) and sizes[("cub", "aper")] == (9430, 2358)
    assert sizes[("cifar100", "official")] == (50000, 10000) and sizes[("domainnet", "coda")] is None
    assert set(PAPER_PROTOCOLS) == {"imagenet-r-5", "imagenet-r-10", "imagenet-r-20", "imagenet-a-10",
                                    "domainnet-5", "cifar100-10", "cub-10"}


# ---------------------------------------------------------------- end to end


def test_a_named_protocol_feeds_one_sdlora_experience(tmp_path, tiny_vit, make_strategy):
    classes = [f"n{i:08d}" for i in range(10)]
    model = tiny_vit()
    bench = paper_benchmark("imagenet-r-5", aper_tree(tmp_path / "r", classes, 4, 2), img_size=TINY_IMG,
                            n_classes=None, model=model)
    assert len(bench.train_stream) == 5 and bench.info.classes_per_experience == 2
    x, y, t = next(iter(torch.utils.data.DataLoader(bench.train_stream[0].dataset, batch_size=8)))
    assert x.shape == (8, 3, TINY_IMG, TINY_IMG) and set(y.tolist()) == {0, 1} and set(t.tolist()) == {0}
    strategy = make_strategy(SDLoRA, model, train_mb_size=4)
    strategy.train(bench.train_stream[0])
    results = strategy.eval(bench.test_stream[:1])
    # class_incremental_benchmark experiences carry no task label, so the metric key has no /Task000 suffix
    assert 0.0 <= results["Top1_Acc_Stream/eval_phase/test_stream"] <= 1.0 and np.isfinite(float(strategy.loss))
    assert sorted(model.head.class_ids.tolist()) == [0, 1]
    assert all(torch.count_nonzero(a.dir_B) > 0 for a in model.adapters)  # the task's direction was trained


def test_first_classes_keep_the_seeds_order_of_the_whole_benchmark(tmp_path):
    bench = imagenet_r(aper_tree(tmp_path / "r"), n_experiences=2, img_size=TINY_IMG, n_classes=None, classes=4)
    info = bench.info
    assert info.n_classes == 4 and info.class_order == tuple(c for c in class_order(6, 1993) if c < 4)
    assert info.class_names == tuple(sorted(WNIDS))[:4] and (info.train_size, info.test_size) == (12, 8)
    folders = _class_of_label(bench)
    for exp in bench.train_stream:
        for sub in _path_datasets(exp.dataset):
            for path, label in sub.imgs:
                assert Path(path).parent.name == folders[label]
    with pytest.raises(ValueError, match="classes=7: imagenet-r at .* has 6 classes; pass 1 to 6"):
        imagenet_r(tmp_path / "r", n_experiences=1, img_size=TINY_IMG, n_classes=None, classes=7)
