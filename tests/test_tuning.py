"""Issue 30: equal tuning on validation images carved from the training images, never a test image."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avalanche_sdlora.data import split_cifar100, validation_split
from benchmarks import compare, tune, tune_confirm, tune_runs, tune_space, tuned
from benchmarks.config import RunConfig
from benchmarks.machine import device_name
from benchmarks.methods import get_method, method_names
from benchmarks.train_amp import TrainingAutocastPlugin
from benchmarks.units import percent

from conftest import TINY, _require_cifar


def _train_only_npz(path: Path, per_class: int = 12, classes: int = 4) -> Path:
    """An npz with training images only (no test key at all), each image's pixels holding its index."""
    n = per_class * classes
    x = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    x[:] = np.arange(n, dtype=np.uint8)[:, None, None, None]
    y = np.repeat(np.arange(classes), per_class).astype(np.int64)
    np.savez(path, x_train=x, y_train=y)
    return path


def _indices(stream) -> set[int]:
    """The file indices of a stream's images (the pixel value each image was made with)."""
    out = set()
    for exp in stream:
        for i in range(len(exp.dataset)):
            x = exp.dataset[i][0]
            out.add(int(round((float(x[0, 0, 0]) + 1) * 127.5)))
    return out


def test_the_validation_split_is_seeded_per_class_and_disjoint_from_training():
    y = np.repeat(np.arange(5), 20)
    a = validation_split(y, 4, seed=0)
    assert np.array_equal(a, validation_split(y, 4, seed=0)) and not np.array_equal(a, validation_split(y, 4, seed=1))
    assert np.bincount(y[a]).tolist() == [4] * 5
    # a class's split does not depend on which other classes exist
    assert np.array_equal(validation_split(y[y < 2], 4, seed=0), a[y[a] < 2])
    with pytest.raises(ValueError, match="validation_per_class 20: class 0 has 20 training images"):
        validation_split(y, 20)


def test_validation_benchmark_reads_no_test_image_and_evaluates_on_held_out_training_images(tmp_path):
    npz = _train_only_npz(tmp_path / "train_only.npz")  # a file without test keys: nothing to read by mistake
    with pytest.raises(KeyError, match="lacks keys"):
        split_cifar100(n_experiences=2, classes=[0, 1, 2, 3], img_size=32, path=npz, train_per_class=None)
    bench = split_cifar100(n_experiences=2, classes=[0, 1, 2, 3], img_size=32, path=npz, train_per_class=None,
                           validation_per_class=3, augment=False)
    held = set(validation_split(np.repeat(np.arange(4), 12), 3).tolist())
    trained, evaluated = _indices(bench.train_stream), _indices(bench.test_stream)
    assert evaluated == held and trained == set(range(48)) - held
    assert [len(e.dataset) for e in bench.test_stream] == [6, 6]


def test_every_method_that_trains_gets_the_same_number_of_candidates_with_its_published_recipes():
    cfg = RunConfig.for_protocol("cifar100-tiny128-full")
    counts = {m: len(tune_space.candidates(m, cfg)) for m in method_names()}
    for m, n in counts.items():
        trains = get_method(m).recipe(cfg).optimizer is not None and not get_method(m).recipe_of
        uses_adam = any(r.optimizer == "adam" for r in tune_space.reference_recipes(m, cfg))
        assert n == ((2 if uses_adam else 1) * len(tune_space.GRID_DECADES) if trains else 0), (m, n)
        wanted = ({"sgd", "adam"} if uses_adam else {"sgd"}) if trains else set()
        assert {c.optimizer for c in tune_space.candidates(m, cfg)} == wanted, m
    # Adam and SGD for a method whose reference uses Adam (SD-LoRA's paper, the prompt methods, InfLoRA), SGD alone
    # for the others, three learning rates each
    assert counts["sdlora"] == counts["dualprompt"] == counts["inflora"] == 6 and counts["simplecil"] == 0
    assert counts["ranpac"] == counts["seq-lora"] == counts["care"] == 3
    # RR and KD train as SD-LoRA does (their first experiences are SD-LoRA's own): tuned once, through sdlora
    assert counts["sdlora-rr"] == counts["sdlora-kd"] == 0 and get_method("sdlora-rr").recipe_of == "sdlora"
    # in all, with the extensions per optimizer after its grid: the same number for every method per optimizer
    totals = {m: tune_space.candidate_count(m, cfg) for m in method_names()}
    assert totals["sdlora"] == totals["dualprompt"] == totals["coda-prompt"] == 6 + 2 * tune_space.EXTENSION_STEPS and totals["simplecil"] == 0
    assert totals["ranpac"] == totals["seq-lora"] == totals["care"] == totals["mos"] == totals["cl-lora"] == 3 + tune_space.EXTENSION_STEPS
    assert tune_space.EXTENSION_STEPS == 2  # the committed tuning ran two

    def has(method, optimizer, lr, **options):
        return any(c.optimizer == optimizer and c.lr == pytest.approx(lr) and dict(c.options) == options
                   for c in tune_space.candidates(method, cfg))

    assert has("sdlora", "sgd", 0.008) and has("sdlora", "adam", 8e-3)  # the authors' code and the paper
    assert has("dualprompt", "adam", 1e-3)  # PILOT's, and dualprompt-pytorch's CIFAR recipe with its own settings
    assert has("dualprompt", "adam", 0.03 * 32 / 256, clip_grad=1.0, pull_coeff=1.0)
    assert has("l2p", "adam", 0.03 * 32 / 256)
    # CODA's per-epoch cosine would run the last of 3 epochs at 1.6 %: every candidate follows it per iteration
    assert has("inflora", "adam", 5e-4, schedule="cosine-steps") and has("coda-prompt", "adam", 1e-3,
                                                                          schedule="cosine-steps")
    assert all(dict(c.options)["schedule"] == "cosine-steps" for m in ("inflora", "coda-prompt")
               for c in tune_space.candidates(m, cfg))
    lrs = sorted(c.lr for c in tune_space.candidates("seq-lora", cfg) if c.optimizer == "sgd")
    assert lrs == pytest.approx([0.01 * 10 ** -0.5, 0.01, 0.01 * 10 ** 0.5])  # one log grid, half a decade apart


def test_tune_chooses_on_validation_only_and_compare_trains_the_choice(tmp_path, monkeypatch):
    _require_cifar()
    npz = _train_only_npz(tmp_path / "train_only.npz")
    monkeypatch.setattr(tune_space, "GRID_DECADES", (-0.5, 0.0))  # two candidates per optimizer keep the test short
    monkeypatch.setattr(tune_space, "OPTIMIZERS", ("sgd",))
    flags = ["--classes", "4", "--n-experiences", "2", "--img-size", "32", "--epochs", "1", "--batch-size", "4",
             "--threads", "1", "--data", str(npz), "--train-per-class", "6"]
    # --report-only trains nothing: every candidate "not run yet", the method incomplete, no choice to use
    report = tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
                        "--out", str(tmp_path / "t"), "--report-only", *flags])
    assert not (report / "candidates").exists()
    assert json.loads((report / "chosen.json").read_text())["methods"]["seq-lora"]["incomplete"] == "0 of 4 run"
    out = tune.main(["--methods", "seq-lora", "simplecil", "--validation-per-class", "3", "--tune-experiences", "1",
                     "--out", str(tmp_path / "t"), *flags])
    rows = [json.loads(p.read_text()) for p in (out / "candidates").rglob("config.json")]
    assert len(rows) == 4 and all(r["validation_per_class"] == 3 and r["first_experiences"] == 1 for r in rows)
    per_task = [p for p in (out / "candidates").rglob("per_task.csv")]
    assert all(len(p.read_text().strip().splitlines()) == 2 for p in per_task)  # header + the one tuned experience
    chosen = json.loads((out / "chosen.json").read_text())
    pick = chosen["methods"]["seq-lora"]
    assert pick["optimizer"] == "sgd" and pick["candidates"] == 4 and chosen["methods"]["simplecil"]["candidates"] == 0
    scores = {c: json.loads((out / "candidates" / "seq-lora" / c / "config.json").read_text())["method_options"]
              for c in ("sgd-lr0.00316", "sgd-lr0.01")}
    assert scores["sgd-lr0.01"]["seq-lora"] == {"lr": 0.01, "optimizer": "sgd"}
    # candidates.csv: validation scores in percent, named so (benchmarks.units), 100 x the candidate's last seen-class
    # accuracy in its per_task.csv (Avalanche's fractions)
    table = pd.read_csv(out / "candidates.csv", float_precision="round_trip").set_index("candidate")
    assert "val_acc" not in table and table.loc[pick["candidate"], "val_acc_pct"] == percent(pick["val_acc"])
    last = pd.read_csv(out / "candidates" / "seq-lora" / "sgd-lr0.01" / "per_task.csv")["acc_seen"].iloc[-1]
    assert table.loc["sgd-lr0.01", "val_acc_pct"] == percent(last)
    # each candidate names the machine its seconds were measured on (a grid may be finished on another machine)
    assert set(table["machine"]) == {device_name("cpu")} and f"| {device_name('cpu')} |" in (out / "README.md").read_text()
    # a second call resumes: nothing is trained again, the same choice comes back
    again = tune.main(["--methods", "seq-lora", "simplecil", "--validation-per-class", "3", "--tune-experiences", "1",
                       "--out", str(tmp_path / "t"), *flags])
    assert json.loads((again / "chosen.json").read_text())["methods"]["seq-lora"]["lr"] == pick["lr"]
    tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
               "--out", str(tmp_path / "t"), "--report-only", *flags])
    assert json.loads((again / "chosen.json").read_text())["methods"]["seq-lora"]["lr"] == pick["lr"]
    # a folder tuned before the extension step existed keeps its candidates: the settings are upgraded, not refused
    settings = json.loads((out / "tuning.json").read_text())
    (out / "tuning.json").write_text(json.dumps({k: v for k, v in settings.items() if not k.startswith("extension")}))
    tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
               "--out", str(tmp_path / "t"), *flags])
    assert json.loads((out / "tuning.json").read_text()) == settings
    # fewer steps than the folder had is another search: refused, naming the setting
    steps = tune_space.EXTENSION_STEPS
    monkeypatch.setattr(tune_space, "EXTENSION_STEPS", steps - 1)
    with pytest.raises(SystemExit, match="extension_steps"):
        tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
                   "--out", str(tmp_path / "t"), "--report-only", *flags])
    monkeypatch.setattr(tune_space, "EXTENSION_STEPS", steps)
    assert json.loads((out / "chosen.json").read_text())["methods"]["seq-lora"]["lr"] == pick["lr"]
    # where candidates execute (threads, workers; a GPU's device) may change between calls, each candidate records
    # its machine; a flag that changes the numbers may not
    swapped = [f if f != "--threads" else "--workers" for f in flags]
    tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
               "--out", str(tmp_path / "t"), "--report-only", *swapped])
    assert json.loads((out / "chosen.json").read_text())["methods"]["seq-lora"]["lr"] == pick["lr"]
    with pytest.raises(SystemExit, match="the run flags"):
        tune.main(["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1",
                   "--out", str(tmp_path / "t"), "--report-only", *flags, "--epochs", "2"])

    run = compare.main(TINY + ["--methods", "seq-lora", "simplecil", "--out", str(tmp_path / "c"), "--tuned",
                               str(out / "chosen.json")])
    config = json.loads((run / "config.json").read_text())
    assert config["recipes"]["seq-lora"] == {"optimizer": "sgd", "lr": pick["lr"], "source": "tuned"}
    assert config["method_options"]["seq-lora"] == {"lr": pick["lr"], "optimizer": "sgd"}
    assert config["tuned"]["file"]["name"] == "chosen.json"
    # a resume (restricted to one method, as a background run is) keeps where the recipes came from
    compare.main(["--resume", str(run), "--methods", "seq-lora", "--quiet"])
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["recipes"]["seq-lora"]["source"] == "tuned" and resumed["tuned"] == config["tuned"]


def test_tuned_recipes_are_refused_for_another_protocol_or_an_untuned_method(tmp_path):
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"protocol": "cifar100-tiny128", "methods": {
        "seq-lora": {"optimizer": "adam", "lr": 1e-3, "options": {}}}}))
    cfg = RunConfig.for_protocol("cifar100-tiny128")
    new, record = tuned.apply(cfg, ["seq-lora", "simplecil"], chosen)
    assert get_method("seq-lora").recipe(new).optimizer == "adam" and record["methods"]["seq-lora"]["lr"] == 1e-3
    with pytest.raises(ValueError, match="holds no chosen recipe for sdlora"):
        tuned.apply(cfg, ["sdlora"], chosen)
    with pytest.raises(ValueError, match="was tuned on --protocol cifar100-tiny128, this run is --protocol "
                                         "cifar100-tiny128-full"):
        tuned.apply(RunConfig.for_protocol("cifar100-tiny128-full"), ["seq-lora"], chosen)
    with pytest.raises(ValueError, match=r"--method-option seq-lora.lr=0.5 differs"):
        tuned.apply(cfg.replace(method_options=(("seq-lora", "lr", 0.5),)), ["seq-lora"], chosen)
    with pytest.raises(SystemExit, match="--tuned '.*missing.json' is not a file"):
        compare.parse_args(TINY + ["--tuned", str(tmp_path / "missing.json")])


def test_the_autocast_plugin_runs_a_peers_training_forward_in_bf16_and_hands_float32_to_the_loss():
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            self.seen = []

        def forward(self, x):
            out = self.linear(x)
            self.seen.append(out.dtype)
            return out

    from avalanche.training import Naive
    from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from torch.utils.data import TensorDataset

    class DS(TensorDataset):
        targets = [0, 1] * 4

    ds = _make_taskaware_classification_dataset(DS(torch.randn(8, 4), torch.tensor([0, 1] * 4)))
    bench = class_incremental_benchmark({"train": ds, "test": ds}, num_experiences=1)
    model = Probe()
    losses = []

    class LossDtype(TrainingAutocastPlugin.__mro__[1]):
        def before_backward(self, strategy, **kw):
            losses.append((strategy.mb_output.dtype, strategy.loss.dtype))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=4,
                         train_epochs=1, device="cpu", plugins=[TrainingAutocastPlugin(), LossDtype()])
        strategy.train(bench.train_stream[0])
        trained = list(model.seen)
        model.seen.clear()
        strategy.eval(bench.test_stream)
    assert trained and all(d == torch.bfloat16 for d in trained)  # the training forward ran under autocast
    assert losses and all(d == (torch.float32, torch.float32) for d in losses)
    assert model.seen and all(d == torch.float32 for d in model.seen)  # evaluation: no training autocast
    assert not torch.is_autocast_enabled("cpu")


def test_a_variant_is_tuned_through_its_base_and_runs_with_its_recipe(tmp_path):
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"protocol": "cifar100-tiny128", "methods": {
        "sdlora": {"optimizer": "adam", "lr": 0.002, "options": {}, "source": "grid"},
        "sdlora-rr": {"recipe_of": "sdlora", "candidates": 0}}}))
    cfg = RunConfig.for_protocol("cifar100-tiny128")
    tuned_cfg, record = tuned.apply(cfg, ["sdlora-rr", "sdlora-kd"], chosen)
    for m in ("sdlora-rr", "sdlora-kd"):
        r = get_method(m).recipe(tuned_cfg)
        assert (r.optimizer, r.lr) == ("adam", 0.002) and record["methods"][m]["recipe_of"] == "sdlora"


def test_two_processes_record_their_failures_side_by_side(tmp_path):
    path = tmp_path / "failures.json"
    tune_runs.record_failures(path, "l2p", {"sgd-lr0.03": "diverged"})
    tune_runs.record_failures(path, "seq-lora", {})  # another process, with nothing failed, keeps l2p's record
    tune_runs.record_failures(path, "inflora", {"adam-lr0.1": "diverged"})
    assert json.loads(path.read_text()) == {"l2p": {"sgd-lr0.03": "diverged"}, "inflora": {"adam-lr0.1": "diverged"}}


def test_candidates_trained_in_parallel_score_as_one_after_another(tmp_path, monkeypatch):
    """--jobs 2 trains the candidates in two spawned processes (each its own folder, one thread): the scores and the
    choice equal those of the serial call, bit for bit (one seed, deterministic on the CPU)."""
    _require_cifar()
    npz = _train_only_npz(tmp_path / "train_only.npz")
    monkeypatch.setattr(tune_space, "GRID_DECADES", (-0.5, 0.0))  # the parent's grid travels to the workers
    monkeypatch.setattr(tune_space, "OPTIMIZERS", ("sgd",))
    flags = ["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1", "--classes", "4",
             "--n-experiences", "2", "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1",
             "--data", str(npz), "--train-per-class", "6"]
    serial = tune.main([*flags, "--out", str(tmp_path / "a")])
    parallel = tune.main([*flags, "--out", str(tmp_path / "b"), "--jobs", "2"])
    a, b = (pd.read_csv(d / "candidates.csv").drop(columns=["train_seconds", "eval_seconds"]) for d in (serial, parallel))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 4 and (a["status"] == "done").all()  # the grid's two and the two extensions after them
    with pytest.raises(SystemExit):
        tune.main([*flags, "--out", str(tmp_path / "c"), "--jobs", "0"])


def test_the_second_stage_trains_the_ties_over_more_experiences_and_chooses_among_them(tmp_path, monkeypatch):
    """--confirm-experiences K: the first choice and the candidates within its noise bound train again on the first K
    experiences (validation images only); the best of them after K is chosen. A finished first stage takes it
    without training again, serially or in parallel alike."""
    _require_cifar()
    npz = _train_only_npz(tmp_path / "train_only.npz")
    monkeypatch.setattr(tune_space, "GRID_DECADES", (-0.5, 0.0))
    monkeypatch.setattr(tune_space, "OPTIMIZERS", ("sgd",))
    flags = ["--methods", "seq-lora", "--validation-per-class", "3", "--tune-experiences", "1", "--classes", "4",
             "--n-experiences", "2", "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1",
             "--data", str(npz), "--train-per-class", "6"]
    out = tune.main([*flags, "--out", str(tmp_path / "a")])
    first = json.loads((out / "chosen.json").read_text())["methods"]["seq-lora"]
    # candidates keep their validation predictions, so the margins use the paired bound
    assert "paired bound" in (out / "README.md").read_text()
    assert all(p.suffix == ".csv" for p in (out / "candidates" / "seq-lora").rglob("predictions/*"))
    assert len(list((out / "candidates" / "seq-lora").rglob("predictions/*.csv"))) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (out / "candidates").rglob("per_task.csv")}
    with pytest.raises(SystemExit):  # K must lie past the first stage
        tune.main([*flags, "--out", str(tmp_path / "a"), "--confirm-experiences", "1"])
    monkeypatch.setattr(tune_confirm, "bound_between", lambda best, o, n: (101.0, False))  # every candidate a tie
    report = tune.main([*flags, "--out", str(tmp_path / "a"), "--confirm-experiences", "2", "--report-only"])
    assert json.loads((report / "chosen-confirm2.json").read_text())["methods"]["seq-lora"]["incomplete"] == \
        "second stage: 0 of 4 run"
    assert json.loads((out / "chosen.json").read_text())["methods"]["seq-lora"] == first  # never clobbered
    tune.main([*flags, "--out", str(tmp_path / "a"), "--confirm-experiences", "2"])
    assert {p: p.stat().st_mtime_ns for p in (out / "candidates").rglob("per_task.csv")} == stamps  # not trained again
    second = out / "confirm" / "experiences2" / "seq-lora"
    configs = [json.loads(p.read_text()) for p in second.rglob("config.json")]
    assert len(configs) == 4 and all(c["first_experiences"] == 2 and c["validation_per_class"] == 3 for c in configs)
    scores = {p.parent.name: pd.read_csv(p)["acc_seen"].iloc[-1] for p in second.rglob("per_task.csv")}
    chosen = json.loads((out / "chosen-confirm2.json").read_text())
    pick = chosen["methods"]["seq-lora"]
    assert pick["val_acc"] == max(scores.values()) and scores[pick["candidate"]] == pick["val_acc"]
    assert pick["confirmed"]["first_choice"] == first["candidate"] and sorted(pick["confirmed"]["among"]) == \
        sorted(scores) and chosen["settings"]["confirm_experiences"] == 2
    assert json.loads((out / "chosen.json").read_text())["methods"]["seq-lora"] == first
    readme = (out / "README.md").read_text()
    assert "Second stage (`--confirm-experiences 2`)" in readme and "Choices the second stage changed:" in readme
    assert len(pd.read_csv(out / "confirm.csv")) == 4
    # compare trains the second stage's choice
    run = compare.main(TINY + ["--methods", "seq-lora", "--out", str(tmp_path / "c"), "--tuned",
                               str(out / "chosen-confirm2.json")])
    assert json.loads((run / "config.json").read_text())["method_options"]["seq-lora"]["lr"] == pick["lr"]
    # the same in two processes: the same scores and choice
    parallel = tune.main([*flags, "--out", str(tmp_path / "b"), "--jobs", "2", "--confirm-experiences", "2"])
    a, b = (pd.read_csv(d / "confirm.csv").drop(columns=["train_seconds", "eval_seconds"]) for d in (out, parallel))
    pd.testing.assert_frame_equal(a, b)
    # no candidate within the bound: the first choice stands, nothing more is trained
    monkeypatch.setattr(tune_confirm, "bound_between", lambda best, o, n: (0.0, False))
    alone = tune.main([*flags, "--out", str(tmp_path / "a"), "--confirm-experiences", "2", "--report-only"])
    kept = json.loads((alone / "chosen-confirm2.json").read_text())["methods"]["seq-lora"]
    assert kept["candidate"] == first["candidate"] and kept["confirmed"]["among"] == [first["candidate"]]
    assert not (alone / "confirm.csv").exists() and "| validation acc, first stage |" not in (alone / "README.md").read_text()


def test_a_choice_at_the_edge_of_its_optimizers_grid_is_flagged():
    def o(optimizer, lr, acc):
        return tune.Outcome(method="m", candidate=f"{optimizer}-{lr}", optimizer=optimizer, lr=lr, options="{}",
                            source="grid", status="done", val_acc=acc, val_mean_acc=acc)

    grid = [o("sgd", 0.00316, 0.80), o("sgd", 0.01, 0.85), o("sgd", 0.0316, 0.90), o("adam", 1e-4, 0.5),
            o("adam", 1e-3, 0.6)]
    assert tune.grid_edge(tune.choose(grid), grid) == "highest"
    grid[0].val_acc = 0.95
    assert tune.grid_edge(tune.choose(grid), grid) == "lowest"
    grid[1].val_acc = 0.99  # inside the grid: nothing to say
    assert tune.grid_edge(tune.choose(grid), grid) == ""
    # the edge is per optimizer: Adam's highest rate is an edge even though SGD tried higher ones
    assert tune.grid_edge(grid[4], grid) == "highest" and tune.grid_edge(o("sgd", 0.01, 0), [o("sgd", 0.01, 0)]) == ""


def test_the_margins_say_which_choices_the_validation_set_cannot_resolve():
    # chosen 90 %, n = 1000: bound = 2 * sqrt(2 * 0.9 * 0.1 / 1000) = 2.68 points; 88 % lies within it, 85 % not
    grid = [_outcome("sgd", 0.01, 0.90), _outcome("sgd", 0.03, 0.88), _outcome("sgd", 0.1, 0.85),
            _outcome("sgd", 0.3, float("nan"), status="failed: diverged")]
    assert tune_confirm.margins(grid, 1000) == ["- m: sgd-0.01 (90.00) leads sgd-0.03 by 2.00; bound 2.7, within it: "
                                                "sgd-0.03"]
    grid[1].val_acc = 0.86  # now 4 points behind: resolved
    assert tune_confirm.margins(grid, 1000)[0].endswith("leads sgd-0.03 by 4.00; bound 2.7, none within it")
    assert tune_confirm.margins(grid[:1], 1000) == []  # nothing to compare with
    assert tune_confirm.margins([*grid, _outcome("sgd", 1.0, float("nan"), status=tune_runs.NOT_RUN)], 1000) == []
    # the images that score a candidate: the held-out images of the classes seen after the tuned experiences
    cfg = RunConfig.for_protocol("cifar100-tiny128-full")
    assert tune_confirm.validation_images(cfg, 50, 2) == 1000 and tune_confirm.validation_images(cfg.replace(classes=20), 50, 2) == 200


def _outcome(optimizer, lr, acc, status="done"):
    return tune.Outcome(method="m", candidate=f"{optimizer}-{lr}", optimizer=optimizer, lr=lr, options="{}",
                        source="grid", status=status, val_acc=acc, val_mean_acc=acc)


def test_the_extension_goes_half_a_decade_past_the_better_end_of_what_was_tried():
    def tried(*accs, statuses=None):
        lrs = (0.01 * 10 ** -0.5, 0.01, 0.01 * 10 ** 0.5)
        statuses = statuses or ["done"] * 3
        return [(tune_space.Recipe("sgd", lr, (("schedule", "cosine-steps"),)), _outcome("sgd", lr, a, st))
                for lr, a, st in zip(lrs, accs, statuses)]

    up = tune_space.extension(tried(0.80, 0.85, 0.90))  # best at the highest rate: a higher one
    assert up.lr == pytest.approx(0.1) and up.optimizer == "sgd" and dict(up.options) == {"schedule": "cosine-steps"}
    assert "highest" in up.source
    assert tune_space.extension(tried(0.95, 0.85, 0.90)).lr == pytest.approx(0.001)  # best at the lowest: a lower one
    # best inside: past the better of the two ends (the same count for every method), here the lowest
    assert tune_space.extension(tried(0.85, 0.90, 0.06)).lr == pytest.approx(0.001)
    # a failed end scores below any finished one; equal ends go down (the rate less likely to diverge)
    assert tune_space.extension(tried(0.85, 0.90, float("nan"), statuses=["done", "done", "failed: nan loss"])).lr \
        == pytest.approx(0.001)
    assert tune_space.extension(tried(0.80, 0.90, 0.80)).lr == pytest.approx(0.001)
    # it depends on every score: nothing while one has not run
    assert tune_space.extension(tried(0.80, 0.85, float("nan"), statuses=["done", "done", "not run yet"])) is None
    # a published recipe at the end keeps its own settings (DualPrompt's pull constraint and clipping)
    ref = tune_space.Recipe("adam", 0.00375, (("clip_grad", 1.0), ("pull_coeff", 1.0)), "dualprompt-pytorch")
    ext = tune_space.extension([(tune_space.Recipe("adam", 3.16e-4), _outcome("adam", 3.16e-4, 0.7)), (ref, _outcome("adam", 0.00375, 0.85))])
    assert ext.lr == pytest.approx(0.00375 * 10 ** 0.5) and ext.options == ref.options and ext.key != ref.key
