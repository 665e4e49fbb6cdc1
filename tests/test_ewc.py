"""The EWC baseline skips frozen parameters without changing what it trains."""

import torch
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.training import Naive
from avalanche.training.plugins import EWCPlugin
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.peers.ewc import TrainableEWCPlugin


def _data(seed: int, classes: list[int]):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 8, generator=g)
    y = torch.tensor(classes * 12)
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    return as_classification_dataset(ds)


def _run(plugin) -> tuple[nn.Module, EWCPlugin]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].requires_grad_(False)  # the "frozen backbone"
    bench = benchmark_from_datasets(train=[_data(0, [0, 1]), _data(1, [2, 3])], test=[_data(2, [0, 1]), _data(3, [2, 3])])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    strategy = Naive(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), train_mb_size=6, train_epochs=2,
                     plugins=[plugin], evaluator=None)
    for exp in bench.train_stream:
        strategy.train(exp, num_workers=0)
    return model, plugin


def test_trainable_ewc_trains_exactly_like_avalanches_and_stores_less():
    ref_model, ref = _run(EWCPlugin(ewc_lambda=100.0))
    model, ours = _run(TrainableEWCPlugin(ewc_lambda=100.0))
    for p_ref, p in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=0, atol=1e-6)
    trainable = {"2.weight", "2.bias"}
    assert set(ref.saved_params[0]) == trainable | {"0.weight", "0.bias"}
    assert all(set(store) == trainable for d in (ours.saved_params, ours.importances) for store in d.values())
    # the penalty really acted: without it the second experience moves the head further
    free_model, _ = _run(EWCPlugin(ewc_lambda=0.0))
    assert not torch.allclose(free_model[2].weight, model[2].weight, atol=1e-4)


def test_loss_parts_trace_separates_the_penalty_from_cross_entropy(capsys):
    from types import SimpleNamespace

    from benchmarks.ewc_trace import LossPartsTrace

    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    ce = float(torch.nn.functional.cross_entropy(out, y))
    model = torch.nn.Module()
    model.classifier = torch.nn.Linear(2, 2)
    strategy = SimpleNamespace(loss=torch.tensor(ce + 3.5), mb_output=out, mb_y=y, model=model,
                               clock=SimpleNamespace(train_iterations=16),
                               experience=SimpleNamespace(current_experience=2))
    LossPartsTrace().after_backward(strategy)
    line = capsys.readouterr().out
    assert line.startswith("exp 2 it 16 ") and "penalty 3.5 " in line and f"ce {ce:.4g} " in line
    strategy.clock.train_iterations = 17  # not a multiple of 8, finite loss: silent
    LossPartsTrace().after_backward(strategy)
    assert capsys.readouterr().out == ""


def test_runner_passes_extra_plugins_to_the_strategy(tmp_path):
    # how ewc_trace attaches its printer: through the runner's Python API, not by patching a builder
    from avalanche.core import SupervisedPlugin

    from benchmarks import inputs, runner
    from benchmarks.config import RunConfig

    class CountBackward(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.n = 0

        def after_backward(self, strategy, **kwargs):
            self.n += 1

    cfg = inputs.resolved(RunConfig.for_protocol(n_experiences=2, train_per_class=4, epochs=1, batch_size=4,
                                                 img_size=32, classes=4, test_per_class=3, device="cpu"))
    counter = CountBackward()
    rows = runner.run("ewc", 0, cfg, inputs.make_benchmark(cfg), tmp_path, plugins=[counter])
    assert [r["experience"] for r in rows] == [0, 1]
    assert counter.n == 4  # 2 experiences x 8 images / batch 4
    assert len((tmp_path / "parts" / "ewc-seed0.csv").read_text().splitlines()) == 3  # the rows are on disk
