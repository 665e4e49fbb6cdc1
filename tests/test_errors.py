"""Bad input gets one clear error that names the problem and the fix."""

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from safetensors.torch import save_file

from avalanche_sdlora import SDLoRA, create_backbone, sdlora_vit
from avalanche_sdlora.data import ImageTensorDataset, load_cifar100, split_cifar100
from avalanche_sdlora.model import read_state_dict


def test_missing_asset_path_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found at .*nope\.npz.*path="):
        load_cifar100(tmp_path / "nope.npz")


def test_npz_without_expected_keys(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match=r"lacks keys \['x_train', 'y_train', 'x_test', 'y_test'\]"):
        load_cifar100(p)


def test_unreadable_npz(tmp_path):
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_cifar100(p)


def test_weights_of_another_width(tmp_path):
    small = create_backbone("vit_small_patch16_224", img_size=32)
    p = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(p))
    with pytest.raises(ValueError, match=r"do not fit 'vit_tiny_patch16_224'.*model_name= that matches checkpoint="):
        create_backbone("vit_tiny_patch16_224", checkpoint=p, img_size=32)


def test_corrupt_weights_file(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="could not read weights"):
        read_state_dict(p)


def test_model_that_is_not_a_vit():
    with pytest.raises(TypeError, match="SD-LoRA needs a timm"):
        sdlora_vit("resnet18")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tinyy_patch16_224'"):
        sdlora_vit("vit_tinyy_patch16_224")


def test_class_count_not_divisible():
    with pytest.raises(ValueError, match=r"100 classes cannot be split evenly into 7 experiences"):
        split_cifar100(n_experiences=7, train_per_class=1, test_per_class=1, img_size=8)


@pytest.mark.parametrize("field", ["train_mb_size", "train_epochs"])
def test_non_positive_batch_size_or_epochs(field):
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32)
    kwargs = {"train_mb_size": 4, "train_epochs": 1, field: 0}
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_non_positive_rank():
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=0)


def _strategy(**kw):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32)
    ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    return SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=4,
                  evaluator=ev, **kw)


def _dataset(labels):
    return ImageTensorDataset(torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8), np.array(labels))


def test_experiences_that_share_classes():
    # Two experiences built from overlapping class sets (a user-made stream).
    a = nc_benchmark(_dataset([0, 1] * 4), _dataset([0, 1]), n_experiences=1, task_labels=False, seed=0)
    b = nc_benchmark(_dataset([1, 2] * 4), _dataset([1, 2]), n_experiences=1, task_labels=False, seed=0)
    s = _strategy()
    s.train(a.train_stream[0])
    with pytest.raises(ValueError, match=r"experience 0 shares classes \[1\] with earlier experiences"):
        s.train(b.train_stream[0])


def test_nan_loss_names_experience_and_step():
    class PoisonInputs(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            if strategy.clock.train_epoch_iterations == 1:
                strategy.mbatch[0] = strategy.mb_x * float("nan")

    bm = nc_benchmark(_dataset([0, 1] * 4), _dataset([0, 1]), n_experiences=1, task_labels=False, seed=0)
    s = _strategy(plugins=[PoisonInputs()])
    with pytest.raises(FloatingPointError, match=r"loss is nan at experience 0, epoch 0, iteration 1"):
        s.train(bm.train_stream[0])


def test_experience_with_no_samples():
    from types import SimpleNamespace

    s = _strategy()
    s.experience = SimpleNamespace(dataset=[], classes_in_this_experience=[0], current_experience=3)
    with pytest.raises(ValueError, match="experience 3 has no samples"):
        s._before_training_exp()
