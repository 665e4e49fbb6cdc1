"""Every plugin in Avalanche 0.6's ``avalanche.training.plugins`` with SDLoRA: it works and does what it is for, or it
is refused in one sentence before anything trains (issue 34). One test per row of docs/plugins.md, with the row's name
as its id; a test checks that the table lists exactly the plugins Avalanche ships.

Tiny random ViT-Tiny at 32 px, 6 classes in 3 experiences of 4 images per class (tensors, task label 0).
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch
from avalanche.benchmarks.scenarios import class_incremental_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import BasePlugin
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.models import MlpVAE, SimpleMLP
from avalanche.training import Naive, VAETraining
from avalanche.training import plugins as P

from avalanche_sdlora import SDLoRA, sdlora_vit
from avalanche_sdlora.plugin_compat import REFUSED

IMG = 32
TABLE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def bench(n_classes=6, n_experiences=3, per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def data(n):
        y = torch.arange(n_classes).repeat_interleave(n)
        x = torch.randn(len(y), 3, IMG, IMG, generator=g)
        return _make_taskaware_tensor_classification_dataset(x, y, task_labels=0)

    return class_incremental_benchmark({"train": data(per_class), "test": data(2)}, num_experiences=n_experiences,
                                       class_order=list(range(n_classes)))


BENCH = bench()


def evaluator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return P.EvaluationPlugin(accuracy_metrics(stream=True), loss_metrics(stream=True), loggers=[])


def strategy(plugins=(), *, lr=0.05, **kwargs):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    kwargs.setdefault("evaluator", evaluator())
    kwargs.setdefault("train_epochs", 2)  # 4 steps per experience: the magnitudes move, so penalties on them show
    return SDLoRA(model=model, optimizer=opt, train_mb_size=4, eval_mb_size=32, plugins=list(plugins), **kwargs)


def train(s, n=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for exp in BENCH.train_stream[:n]:
            s.train(exp)
    return s


class LossParts(P.SupervisedPlugin):
    """Put after a regularising plugin: per experience, the largest |loss - criterion| seen before backward."""

    def __init__(self):
        super().__init__()
        self.extra: dict[int, float] = {}

    def before_backward(self, strategy, **kwargs):
        with torch.no_grad():
            extra = abs(float(strategy.loss - strategy.criterion()))  # SI's importance may be negative
        t = strategy.clock.train_exp_counter
        self.extra[t] = max(self.extra.get(t, 0.0), extra)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def differs_from_plain(plugins, n=2, **kwargs) -> bool:
    """Whether training with ``plugins`` ends elsewhere than the same run without them (same seed, same data)."""
    a = trainable(train(strategy(plugins, **kwargs), n).model)
    b = trainable(train(strategy(**kwargs), n).model)
    return a.keys() == b.keys() and any(not torch.allclose(a[k], b[k]) for k in a)


def lora_names(model):
    return {n for n, _ in model.named_parameters() if "lora_" in n}


# --------------------------------------------------------------------------- rows: works, and does what it is for
def check_EWCPlugin():
    for mode, kw in (("online", {"decay_factor": 0.5}), ("separate", {})):
        ewc, parts = P.EWCPlugin(ewc_lambda=100.0, mode=mode, **kw), LossParts()
        s = train(strategy([ewc, parts]), 3)  # online mode pairs importances by position at the end of each experience
        assert parts.extra.get(0, 0.0) == 0.0 and parts.extra[1] > 0 and parts.extra[2] > 0, (mode, parts.extra)
        last = ewc.importances[max(ewc.importances)]
        assert float(last["magnitudes.alpha"].data.abs().sum()) > 0  # the magnitudes have an importance
        assert not any("lora_" in k for k in last)  # importances are taken once the pair is frozen into buffers
        assert lora_names(s.model) == set()


def check_MASPlugin():
    mas, parts = P.MASPlugin(lambda_reg=0.1), LossParts()  # 100 diverges at lr 0.05
    train(strategy([mas, parts]), 3)
    assert parts.extra[1] > 0 and parts.extra[2] > 0
    assert float(mas.importance["magnitudes.alpha"].data.abs().sum()) > 0


def check_SynapticIntelligencePlugin():
    si = P.SynapticIntelligencePlugin(si_lambda=1e4)
    s = strategy([si])
    train(s, 1)
    pair = "backbone.blocks.0.attn.qkv.lora_A"
    held = [d[pair] for d in (*si.ewc_data, *si.syn_data.values())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.train(BENCH.train_stream[1])
    # The next task's pair has the finished pair's names: SI starts it afresh (no state of the finished pair).
    assert all(d[pair] is not h for d, h in zip((*si.ewc_data, *si.syn_data.values()), held))
    assert "magnitudes.alpha" in si.ewc_data[1] and si.ewc_data[1]["magnitudes.alpha"].shape == (2,)
    # Avalanche 0.6's SI on the CPU: its saved weights are `param.detach().cpu().flatten()`, the parameter itself
    # there, so every step's update reads 0 and every importance is 0, under Naive too (an accelerator copies).
    assert float(si.ewc_data[1]["magnitudes.alpha"].data.abs().sum()) == 0
    naive_si = P.SynapticIntelligencePlugin(si_lambda=1e4)
    torch.manual_seed(0)
    mlp = SimpleMLP(num_classes=6, input_size=3 * IMG * IMG)
    naive = Naive(model=mlp, optimizer=torch.optim.SGD(mlp.parameters(), lr=0.05), train_mb_size=4,
                  plugins=[naive_si], evaluator=evaluator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive.train(BENCH.train_stream[0])
    assert all(float(d.data.abs().sum()) == 0 for d in naive_si.ewc_data[1].values())


def check_RWalkPlugin():
    rw, parts = P.RWalkPlugin(ewc_lambda=100.0, delta_t=2), LossParts()
    s = strategy([rw, parts])
    train(s, 3)
    assert parts.extra[1] > 0 and parts.extra[2] > 0
    assert "magnitudes.alpha" in rw.exp_penalties
    assert not lora_names(s.model) & set(rw.exp_penalties)  # no penalty kept under a finished pair's names


class ClosedFormGEM(P.GEMPlugin):
    """GEM with its quadratic program solved in closed form for one memory (quadprog is not installed here).

    With one constraint GEM's dual is a scalar: v = max(memory_strength, -(G.g)/(G.G)) (GEM adds a 1e-3 ridge to G.G);
    g* = g + v G. GEM's own code decides when to project and writes g* back into the gradients.
    """

    projected = 0
    conflicts_after: list[float]

    def solve_quadprog(self, g):
        assert self.G.shape[0] == 1
        G = self.G[0].double().cpu()
        v = max(self.memory_strength, float(-(G @ g.double().cpu()) / (G @ G)))
        self.projected += 1
        out = g.double().cpu() + v * G
        self.conflicts_after = getattr(self, "conflicts_after", []) + [float(G @ out)]
        return out.float()


def check_GEMPlugin():
    # GEM projects when the current gradient would raise the memory's loss, and after the projection it does not.
    # (Before issue 34 it never did: the frozen head rows kept their last gradient, which no optimizer cleared, and
    # that stale gradient, the same in the memory's and the current one, dominated their product.)
    # Over every column (as Naive's loss) the two experiences' gradients conflict here; over the current classes only
    # (the paper's loss) they did not in this run (0 projections): GEM checked every step and had nothing to do.
    gem = ClosedFormGEM(patterns_per_experience=8, memory_strength=0.0)
    s = train(strategy([gem], current_classes_only=False), 2)
    assert gem.projected > 0 and min(gem.conflicts_after) >= -1e-4
    assert gem.G.shape[0] == 1  # one row per earlier experience
    assert all(p.grad is None for p in s.model.parameters() if not p.requires_grad)


def check_AGEMPlugin():
    agem = P.AGEMPlugin(patterns_per_experience=8, sample_size=8)
    assert differs_from_plain([agem], current_classes_only=False)


def check_LwFPlugin():
    lwf, parts = P.LwFPlugin(alpha=1.0, temperature=2), LossParts()
    train(strategy([lwf, parts]), 2)
    assert parts.extra.get(0, 0.0) == 0.0 and parts.extra[1] > 0  # the old model's outputs are distilled


def check_ReplayPlugin():
    seen = []

    class Targets(P.SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            seen.append((strategy.clock.train_exp_counter, set(strategy.mb_y.tolist())))

    train(strategy([P.ReplayPlugin(mem_size=8), Targets()]), 2)
    assert any(t == 1 and ys & {0, 1} for t, ys in seen)  # experience 1's minibatches hold experience 0's classes


def check_RARPlugin():
    rar, parts = P.RARPlugin(batch_size_mem=4, mem_size=8), LossParts()
    train(strategy([rar, parts], train_epochs=1), 2)
    assert parts.extra.get(0, 0.0) == 0.0 and parts.extra[1] > 0  # the (adversarially perturbed) buffer's loss


def check_LRSchedulerPlugin():
    s = strategy(train_epochs=2)
    s.plugins.append(P.LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(s.optimizer, step_size=1, gamma=0.1)))
    lrs = []

    class Lr(P.SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            lrs.append(strategy.optimizer.param_groups[0]["lr"])

    s.plugins.append(Lr())
    train(s, 1)
    assert lrs == pytest.approx([0.005, 0.0005])  # stepped after each epoch, on the user's optimizer


def check_EarlyStoppingPlugin():
    stop = P.EarlyStoppingPlugin(patience=1, val_stream_name="test_stream", metric_name="Top1_Acc_Stream",
                                 mode="min", margin=1.0)  # needs a 100-point drop to count as better: stops early
    epochs = []

    class Epochs(P.SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            epochs.append(strategy.clock.train_exp_epochs)

    s = strategy([stop, Epochs()], train_epochs=5, eval_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.train(BENCH.train_stream[0], eval_streams=[BENCH.test_stream[0]])
    assert 0 < len(epochs) < 5


def check_EvaluationPlugin():
    s = train(strategy(), 1)
    res = s.eval(BENCH.test_stream[:1])
    assert 0 <= res["Top1_Acc_Stream/eval_phase/test_stream"] <= 1 and "Loss_Stream/eval_phase/test_stream" in res


def check_SupervisedPlugin():
    calls = []

    class Mine(P.SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            calls.append(len(lora_names(strategy.model)))  # runs after SD-LoRA's growth: the pair is there

    train(strategy([Mine()]), 1)
    assert calls == [2 * 12]


def generator():
    torch.manual_seed(0)
    vae = MlpVAE((3, IMG, IMG), nhid=2, device="cpu")
    return VAETraining(model=vae, optimizer=torch.optim.Adam(vae.parameters(), lr=1e-3), train_mb_size=8,
                       train_epochs=1, device="cpu", evaluator=None)


def check_GenerativeReplayPlugin():
    with pytest.raises(ValueError, match=r"^SDLoRA cannot take GenerativeReplayPlugin without generator_strategy="):
        strategy([P.GenerativeReplayPlugin()])
    replay = P.GenerativeReplayPlugin(generator_strategy=generator())
    parts = []

    class Batch(P.SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            parts.append((strategy.clock.train_exp_counter, len(strategy.mb_y)))

    train(strategy([replay, P.TrainGeneratorAfterExpPlugin(), Batch()]), 2)
    # From the second experience on, generated samples labelled by the old model join every minibatch.
    assert max(n for t, n in parts if t == 1) > max(n for t, n in parts if t == 0)


def check_TrainGeneratorAfterExpPlugin():
    with pytest.raises(ValueError, match=r"^SDLoRA cannot take TrainGeneratorAfterExpPlugin alone"):
        strategy([P.TrainGeneratorAfterExpPlugin()])
    gen = generator()
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    train(strategy([P.GenerativeReplayPlugin(generator_strategy=gen), P.TrainGeneratorAfterExpPlugin()]), 1)
    assert any(not torch.equal(before[k], v) for k, v in gen.model.state_dict().items())  # the VAE trained


WORKS = {name[len("check_"):]: f for name, f in dict(globals()).items() if name.startswith("check_")}


# --------------------------------------------------------------------------- rows: refused in one sentence
REFUSAL_ARGS = {
    "CWRStarPlugin": lambda m: P.CWRStarPlugin(m, cwr_layer_name="head"),
    "CoPEPlugin": lambda m: P.CoPEPlugin(mem_size=8, n_classes=6),
    "MIRPlugin": lambda m: P.MIRPlugin(batch_size_mem=2, mem_size=16, subsample=8),
    "BiCPlugin": lambda m: P.BiCPlugin(mem_size=8, stage_2_epochs=1),
    "GSS_greedyPlugin": lambda m: P.GSS_greedyPlugin(mem_size=8, input_size=[3, IMG, IMG]),
    "GDumbPlugin": lambda m: P.GDumbPlugin(mem_size=8),
    "LFLPlugin": lambda m: P.LFLPlugin(lambda_e=0.1),
    "MemoryNCMUpdate": lambda m: P.MemoryNCMUpdate(mem_size=8),
    "MemoryFeCAMUpdate": lambda m: P.MemoryFeCAMUpdate(mem_size=8),
}
AVALANCHE_LIMIT = {"MIRPlugin", "BiCPlugin", "GSS_greedyPlugin"}


def refused(name):
    def check():
        torch.manual_seed(0)
        model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
        plugin = REFUSAL_ARGS.get(name, lambda m: getattr(P, name)())(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with pytest.raises(ValueError) as err:
            SDLoRA(model=model, optimizer=opt, plugins=[plugin], evaluator=evaluator())
        msg = str(err.value)
        assert msg.startswith(f"SDLoRA cannot take {name}: it ") and msg.endswith(".") and "\n" not in msg
        assert msg.count(": ") == 2  # what it does, then what to do instead
        # Added after construction (strategy.plugins.append), it is refused when training starts, before any change.
        s = SDLoRA(model=model, optimizer=opt, evaluator=evaluator())
        s.plugins.append(plugin)
        with pytest.raises(ValueError, match=f"^SDLoRA cannot take {name}: it "):
            s.train(BENCH.train_stream[0])
        assert len(model.head.rows) == 0 and len(model.magnitudes) == 0
        if name in AVALANCHE_LIMIT:  # Avalanche's own limit: Naive fails the same way with Avalanche's own parts
            naive_fails(name)

    return check


def naive_fails(name):
    torch.manual_seed(0)
    mlp = SimpleMLP(num_classes=6, input_size=3 * IMG * IMG)
    mlp.features[0].weight.requires_grad_(False)  # one frozen parameter (MIR's limit); the others do not need it
    plugin = REFUSAL_ARGS[name](mlp)
    naive = Naive(model=mlp, optimizer=torch.optim.SGD(mlp.parameters(), lr=0.01), train_mb_size=4,
                  plugins=[plugin], evaluator=evaluator())
    with warnings.catch_warnings(), pytest.raises(Exception) as err:
        warnings.simplefilter("ignore")
        for exp in BENCH.train_stream:
            naive.train(exp)
    expected = {"MIRPlugin": "does not require grad", "BiCPlugin": "has no setter", "GSS_greedyPlugin": "empty"}[name]
    assert expected in str(err.value)


ROWS = {**WORKS, **{cls.__name__: refused(cls.__name__) for cls in REFUSED}}


def avalanche_plugins() -> set[str]:
    return {n for n, c in vars(P).items() if inspect.isclass(c) and issubclass(c, (BasePlugin, P.EvaluationPlugin))
            and c.__module__.startswith("avalanche.")}


def table_rows() -> dict[str, str]:
    """docs/plugins.md's rows: {plugin: status} from lines '| `Name` | status | ...'."""
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*([^|]+?)\s*\|", TABLE.read_text(), flags=re.M)
    return dict(rows)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_plugin(name):
    ROWS[name]()


def test_the_table_lists_every_plugin_avalanche_ships_and_each_row_has_a_test():
    shipped = avalanche_plugins()
    assert len(shipped) >= 30  # Avalanche 0.6.0's count, so a broken import cannot empty the list
    rows = table_rows()
    assert set(rows) == shipped, (sorted(shipped - set(rows)), sorted(set(rows) - shipped))
    assert set(ROWS) == shipped
    for name, status in rows.items():
        refused_here = name in {cls.__name__ for cls in REFUSED}
        kind = "Avalanche's limit" if name in AVALANCHE_LIMIT else "refused" if refused_here else "works"
        assert status.startswith(kind), (name, status, kind)


@pytest.mark.parametrize("plugin", ["EWCPlugin", "MASPlugin", "SynapticIntelligencePlugin", "RWalkPlugin"])
def test_name_tracking_regularisers_refuse_knowledge_distillation_in_one_sentence(plugin):
    # SDLoRAKD drops a magnitude when it folds a direction into earlier ones (measured with kd_threshold=1e9:
    # "Shape cannot decrease" inside EWC, MAS and SI); SDLoRARR's pairs change rank and work (same names, new state).
    from avalanche_sdlora import SDLoRAKD

    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    args = {"EWCPlugin": (1.0,), "SynapticIntelligencePlugin": (1.0,)}.get(plugin, ())
    s = SDLoRAKD(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                 plugins=[getattr(P, plugin)(*args)], evaluator=evaluator(), kd_threshold=1e9)
    with pytest.raises(ValueError, match=f"^{plugin} cannot follow knowledge distillation .* use SDLoRA or SDLoRARR"):
        s.train(BENCH.train_stream[0])
    assert len(model.magnitudes) == 0


def test_parameter_names_never_move_and_old_head_checkpoints_still_load():
    s = strategy(train_epochs=1)
    orders = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for exp in BENCH.train_stream:
            s.train(exp)
            orders.append([n for n, _ in s.model.named_parameters()])
    for i in (1, 2):  # after each experience: the earlier names, in their order, then the new rows
        assert orders[i][:len(orders[i - 1])] == orders[i - 1]
        assert orders[i][len(orders[i - 1]):] == [f"head.rows.{i}.weight", f"head.rows.{i}.bias"]
    # A state dict written when the head held weights.k / biases.k loads into a fresh model, to the same outputs.
    sd = s.model.state_dict()
    old_format = {k: v for k, v in sd.items() if not k.startswith("head.rows.")}
    for k in range(3):
        old_format[f"head.weights.{k}"], old_format[f"head.biases.{k}"] = sd[f"head.rows.{k}.weight"], sd[f"head.rows.{k}.bias"]
    torch.manual_seed(1)
    fresh = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    fresh.load_state_dict(old_format)
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(fresh.eval()(x), s.model.eval()(x))
    assert [p.requires_grad for p in fresh.head.weights] == [False, False, True]
