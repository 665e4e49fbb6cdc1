"""Nothing silent (issue 36): every bad input gets one sentence naming the argument or flag, the value and the fix;
a damaged file never yields numbers; run ids stay inside --out.

One parametrized test per family, each case a probe that once failed raw (a traceback from deep inside timm, torch or
pandas) or silently (a wrong number, a wrong state): the library's inputs, adapter files, damaged run folders, and
the flags that place a run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from safetensors.torch import save, save_file
from torch.utils.data import TensorDataset

from avalanche_sdlora import SDLoRA, sdlora_vit
from avalanche_sdlora.adapter_io import CONFIG_FILE, TENSORS_FILE, load_adapters, sha256_hex
from avalanche_sdlora.checkpoint import load_checkpoint, save_checkpoint

from conftest import TINY, _require_cifar

ROOT = Path(__file__).resolve().parent.parent
NAME = "vit_tiny_patch16_224"


# ------------------------------------------------------------------------------------------------ library inputs
def _strategy(model=None):
    torch.manual_seed(0)
    model = model or sdlora_vit(NAME, img_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    return SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=4, evaluator=ev)


def _stream(x, y, targets=None):
    """A one-experience stream made by hand (targets: what the dataset says its samples carry, default ``y``)."""
    ds = _make_taskaware_classification_dataset(TensorDataset(x, y), targets=y if targets is None else targets)
    return with_classes_timeline(benchmark_from_datasets(train=[ds], test=[ds]))


def _train(x, y, targets=None):
    bm = _stream(x, y, targets)
    _strategy().train(bm.train_stream[0])


def _train_then_eval(x_eval):
    y = torch.tensor([0, 1] * 4)
    s = _strategy()
    s.train(_stream(torch.randn(8, 3, 32, 32), y).train_stream[0])
    s.eval(_stream(x_eval, y).test_stream)


def _weights_with(tmp_path, value):
    torch.manual_seed(0)
    sd = sdlora_vit(NAME, img_size=32).export_timm_state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    sd["blocks.3.mlp.fc1.weight"][0, 0] = value
    save_file(sd, str(tmp_path / "w.safetensors"))
    return tmp_path / "w.safetensors"


Y = torch.tensor([0, 1] * 4)
LIBRARY_CASES = {
    "grayscale": (lambda p: _train(torch.randn(8, 1, 32, 32), Y), ValueError,
                  r"images of training experience 0 have 1 channel\(s\) \(shape \(4, 1, 32, 32\)\) but the model takes "
                  r"3; grayscale: repeat the channel, x\.expand\(-1, 3, -1, -1\)"),
    "rgba": (lambda p: _train(torch.randn(8, 4, 32, 32), Y), ValueError,
             r"have 4 channel\(s\) .* the model takes 3; RGBA: drop the alpha channel, x\[:, :3\]"),
    "other size": (lambda p: _train(torch.randn(8, 3, 48, 48), Y), ValueError,
                   r"images of training experience 0 are 48x48 px but the model was built for 32x32 px; resize the "
                   r"images \(e\.g\. v2\.Resize\(32\)\) or build the model with sdlora_vit\(\.\.\., img_size=48\)"),
    "other size at evaluation": (lambda p: _train_then_eval(torch.randn(8, 3, 64, 64)), ValueError,
                                 r"images of evaluation experience 0 are 64x64 px but the model was built for 32x32"),
    "channels last": (lambda p: _train(torch.randn(8, 32, 32, 3), Y), ValueError,
                      r"have shape \(4, 32, 32, 3\), channels last .* pass x\.permute\(0, 3, 1, 2\)"),
    "uint8 in a stream": (lambda p: _train(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), Y), TypeError,
                          r"images of training experience 0 are a torch\.uint8 tensor; the model takes float images"),
    "uint8 into the model": (lambda p: sdlora_vit(NAME, img_size=32)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
                             TypeError, r"the images given to the model are a torch\.uint8 tensor; .* x\.float\(\) / 255"),
    "one image without its batch": (lambda p: sdlora_vit(NAME, img_size=32)(torch.zeros(3, 32, 32)), ValueError,
                                    r"have shape \(3, 32, 32\); pass a batch .* x\.unsqueeze\(0\)"),
    "label out of range": (lambda p: _train(torch.randn(8, 3, 32, 32), torch.tensor([0, 7] * 4), targets=Y),
                           ValueError, r"labels of training experience 0 hold class id 7 but the head has 2 output\(s\)"),
    "negative label": (lambda p: _train(torch.randn(8, 3, 32, 32), torch.tensor([-1, 1] * 4)), ValueError,
                       r"class ids of training experience 0 hold the negative class id -1; .* renumber the classes"),
    "float labels": (lambda p: _train(torch.randn(8, 3, 32, 32), torch.tensor([0.0, 1.0] * 4), targets=Y), TypeError,
                     r"labels of training experience 0 are torch\.float32 values; pass integer class ids"),
    "NaN in the weights": (lambda p: sdlora_vit(NAME, img_size=32, checkpoint=_weights_with(p, float("nan"))),
                           ValueError, r"NaN or inf in the weights file '.*w\.safetensors' \(1 value\(s\) of "
                                       r"'blocks\.3\.mlp\.fc1\.weight'\); pass checkpoint= an undamaged weights file"),
    "inf in the weights": (lambda p: sdlora_vit(NAME, img_size=32, checkpoint=_weights_with(p, float("inf"))),
                           ValueError, r"NaN or inf in the weights file"),
    "img_size not a multiple of the patch": (lambda p: sdlora_vit(NAME, img_size=33), ValueError,
                                             r"img_size=33 is not a multiple of 'vit_tiny_patch16_224''s patch size 16 "
                                             r"\(the last pixel rows and columns would be ignored\); pass img_size=32 or 48"),
}


@pytest.mark.parametrize("case", list(LIBRARY_CASES))
def test_a_bad_library_input_is_one_sentence_naming_it(case, tmp_path):
    probe, kind, message = LIBRARY_CASES[case]
    with pytest.raises(kind, match=message) as err:
        probe(tmp_path)
    assert "\n" not in str(err.value)


def test_task_labels_get_a_note_and_are_ignored():
    x = torch.randn(8, 3, 32, 32)
    ds = _make_taskaware_classification_dataset(TensorDataset(x, torch.tensor([0, 1, 2, 3] * 2)),
                                                targets=torch.tensor([0, 1, 2, 3] * 2))
    bm = nc_benchmark(ds, ds, n_experiences=2, task_labels=True, seed=0, fixed_class_order=[0, 1, 2, 3])
    s = _strategy()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for exp in bm.train_stream:
            s.train(exp)
    notes = [str(w.message) for w in seen if "task label" in str(w.message)]
    assert notes == ["experience 1 carries task label(s) [1]: SD-LoRA is class-incremental and ignores task labels "
                     "(one head over every class, no task id at test time); build the benchmark without them (e.g. "
                     "nc_benchmark(..., task_labels=False)) to silence this note"]


# ------------------------------------------------------------------------------------------------ adapter files
@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory):
    torch.manual_seed(0)
    model = sdlora_vit(NAME, img_size=32, rank=2)
    model.add_task()
    with torch.no_grad():
        for a in model.adapters:
            a.lora_B.normal_(std=0.05)
    folder = model.save_adapters(tmp_path_factory.mktemp("adapters") / "a")
    return folder


def _edit_config(folder, **changes):
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))


def _flip_a_bit(folder):
    data = bytearray((folder / TENSORS_FILE).read_bytes())
    data[-5] ^= 0x01
    (folder / TENSORS_FILE).write_bytes(bytes(data))


def _nan_tensors(folder):
    from safetensors.torch import load as load_bytes

    tensors = load_bytes((folder / TENSORS_FILE).read_bytes())
    tensors["magnitudes.alpha"][0] = float("nan")
    data = save(tensors)
    (folder / TENSORS_FILE).write_bytes(data)
    _edit_config(folder, sha256=sha256_hex(data))  # a consistent file: only the values are wrong


def _base(seed=0):
    torch.manual_seed(seed)
    return sdlora_vit(NAME, img_size=32, rank=2)


def _save_diverged(folder):
    model = _base()
    model.add_task()
    with torch.no_grad():
        model.magnitudes.alpha.fill_(float("nan"))
    model.save_adapters(folder)


def _checkpoint_without_base_hash(folder):
    model = _base()
    model.add_task()
    save_checkpoint(folder, 0, model)
    meta = json.loads((folder / "exp0.json").read_text())
    meta["adapters"].pop("base_sha256")
    (folder / "exp0.json").write_text(json.dumps(meta))
    load_checkpoint(folder, 0, _base())


ADAPTER_CASES = {
    "sha256 removed, a bit flipped": (lambda f: (_edit_config(f, sha256=...), _flip_a_bit(f)),
                                      r"adapter_config\.json' records no sha256 of adapter_model\.safetensors, so damage "
                                      r"to it cannot be detected; .* load_adapters\(\.\.\., allow_unverified=True\)"),
    "base_sha256 removed, another base": (lambda f: _edit_config(f, base_sha256=...),
                                          r"records no base_sha256, so the base weights they were trained on cannot be "
                                          r"checked; .* allow_unverified=True"),
    "NaN in the adapters": (_nan_tensors, r"NaN or inf in the adapters in '.*adapter_model\.safetensors' \(1 value\(s\) "
                                          r"of 'magnitudes\.alpha'\)"),
    "img_size missing": (lambda f: _edit_config(f, img_size=...),
                         r"has img_size=None; it must be the pair \[height, width\] .* save the adapters again"),
    "img_size a number": (lambda f: _edit_config(f, img_size=32), r"has img_size=32; it must be the pair"),
    "img_size of one value": (lambda f: _edit_config(f, img_size=[32]), r"has img_size=\[32\]; it must be the pair"),
    "config a list": (lambda f: (f / CONFIG_FILE).write_text("[1, 2]"),
                      r"adapter_config\.json' is not an avalanche-sdlora adapter config"),
}


@pytest.mark.parametrize("case", [*ADAPTER_CASES, "saving NaN adapters", "a checkpoint without base_sha256"])
def test_a_damaged_or_unverifiable_adapter_file_is_refused(case, saved_adapters, tmp_path):
    folder = tmp_path / "a"
    if case == "saving NaN adapters":
        with pytest.raises(ValueError, match=r"NaN or inf in the model's adapters \(1 value\(s\) of 'magnitudes\.alpha'"
                                             r"\); nothing was saved"):
            _save_diverged(folder)
        assert not folder.exists()
        return
    if case == "a checkpoint without base_sha256":
        with pytest.raises(ValueError, match=r"exp0\.safetensors' records no base_sha256"):
            _checkpoint_without_base_hash(tmp_path / "ckpt")
        return
    damage, message = ADAPTER_CASES[case]
    shutil.copytree(saved_adapters, folder)
    damage(folder)
    base = _base(seed=1 if "another base" in case else 0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=message) as err:
        load_adapters(folder, base)
    assert "\n" not in str(err.value)
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # untouched
    if case == "config a list":
        return
    with pytest.raises(ValueError, match=message.split(" ")[0]):
        load_adapters(folder, checkpoint=None)  # building the base by name refuses it too


def test_allow_unverified_loads_a_file_without_hashes(saved_adapters, tmp_path):
    folder = tmp_path / "a"
    shutil.copytree(saved_adapters, folder)
    _edit_config(folder, sha256=..., base_sha256=...)
    x = torch.randn(2, 3, 32, 32)
    reference = load_adapters(saved_adapters, _base()).eval()
    loaded = load_adapters(folder, _base(), allow_unverified=True).eval()
    assert torch.equal(loaded(x), reference(x))


# ------------------------------------------------------------------------------------------------ damaged run folders
CLI = TINY + ["--methods", "ncm"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    _require_cifar()
    from benchmarks import compare

    return compare.main(CLI + ["--out", str(tmp_path_factory.mktemp("runs")), "--run-id", "r"])


def _cli_error(capsys, argv) -> str:
    from benchmarks import compare

    assert compare.cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _append_row_again(part: Path):
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines + lines[-1:]))


def _keep_lines(path: Path, n: int):
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))


def _replace(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _cut(path: Path, keep: float):
    """Keep about ``keep`` of the file, cut right after a comma: the last line visibly lacks its fields (a cut inside
    a number would leave a shorter number, still a well-formed line)."""
    text = path.read_bytes()
    path.write_bytes(text[: text.rindex(b",", 0, int(len(text) * keep)) + 1])


DAMAGE = {
    "config.json a list": ("config.json", lambda r: (r / "config.json").write_text("[]"),
                           "holds a JSON list, not the object benchmarks.compare writes"),
    "config.json binary": ("config.json", lambda r: (r / "config.json").write_bytes(b"\x89PNG\x00\xff\xfe"),
                           "is not text (a binary file)"),
    "an empty part": ("ncm-seed0.csv", lambda r: (r / "parts" / "ncm-seed0.csv").write_text(""), "is empty"),
    "a header-only part": ("ncm-seed0.csv", lambda r: _keep_lines(r / "parts" / "ncm-seed0.csv", 1),
                           "has a header but no rows"),
    "a duplicated row": ("ncm-seed0.csv", lambda r: _append_row_again(r / "parts" / "ncm-seed0.csv"),
                         "holds experience(s) [1] more than once (one row per experience)"),
    "a stray CSV": ("notes.csv", lambda r: (r / "parts" / "notes.csv").write_text("a,b\n1,2\n"),
                    "is not a part of this run (its name is not <method>-seed<k>.csv)"),
    "a copied part": ("ncm-seed0 (copy).csv", lambda r: shutil.copy(r / "parts" / "ncm-seed0.csv",
                                                                      r / "parts" / "ncm-seed0 (copy).csv"),
                      "is not a part of this run"),
    "a part renamed to another seed": ("ncm-seed7.csv", lambda r: shutil.copy(r / "parts" / "ncm-seed0.csv",
                                                                               r / "parts" / "ncm-seed7.csv"),
                                       "holds rows of [('ncm', 0)], not only of ('ncm', 7) as its name says"),
    "a non-numeric seed": ("ncm-seed0.csv", lambda r: _replace(r / "parts" / "ncm-seed0.csv", "\nncm,0,", "\nncm,x,"),
                           "has a non-numeric or empty seed"),
    "a non-numeric accuracy": ("ncm-seed0.csv", lambda r: _replace(r / "parts" / "ncm-seed0.csv", ",2,", ",2,n/a"),
                               "has a non-numeric or empty acc_seen"),
    "a missing column": ("ncm-seed0.csv", lambda r: _replace(r / "parts" / "ncm-seed0.csv", "acc_seen", "acc_sen"),
                         "lacks the column(s) ['acc_seen'] every part has"),
    "a truncated eval log": ("eval_results.csv", lambda r: _cut(r / "csv" / "ncm" / "seed0" / "eval_results.csv", 0.8),
                             "is truncated or damaged at line"),
    "a log without its header": ("training_results.csv", lambda r: (r / "csv" / "ncm" / "seed0" /
                                                                     "training_results.csv").write_text("0,0,0.5\n"),
                                 "does not start with the CSVLogger's header"),
    "an empty cell in a log": ("eval_results.csv", lambda r: _replace(r / "csv" / "ncm" / "seed0" / "eval_results.csv",
                                                                      "\n0,0,", "\n0,0,,"),
                               "is truncated or damaged at line 2"),
    "a log of a version before 0.4.0": (
        "training_results.csv", lambda r: (r / "csv" / "ncm" / "seed0" / "training_results.csv").write_text(
            "training_exp,epoch,training_accuracy,val_accuracy,training_loss,val_loss\n"),
        "has the validation columns of a version before 0.4.0"),
}


@pytest.mark.parametrize("mode", ["--resume", "--report-only"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_folder_is_refused_naming_the_file(case, mode, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    name, damage, problem = DAMAGE[case]
    damage(run)
    (run / "DONE").unlink()  # an interrupted run, so that --resume has work to do
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    err = _cli_error(capsys, [*CLI, mode, str(run)] if mode == "--resume" else [mode, str(run)])
    assert f"{name}' {problem}" in err, err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing was merged into per_task.csv or summary.csv


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(finished_run, tmp_path, capsys):
    # The CSV logger writes a line at a time: a kill can cut only the last line of an unfinished (method, seed).
    from benchmarks import compare

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "DONE").unlink()
    part = run / "parts" / "ncm-seed0.csv"
    _keep_lines(part, 2)  # experience 0 only
    log = run / "csv" / "ncm" / "seed0" / "eval_results.csv"
    log.write_text(log.read_text()[:-3])
    assert compare.main([*CLI, "--resume", str(run)]) == run
    assert (run / "DONE").exists()
    import pandas as pd

    resumed, whole = (pd.read_csv(r / "per_task.csv").drop(columns=["train_seconds", "eval_seconds"])
                      for r in (run, finished_run))
    pd.testing.assert_frame_equal(resumed, whole)


# ------------------------------------------------------------------------------------------------ flags placing a run
@pytest.mark.parametrize("flags, message", [
    (["--run-id", "../escape"], "--run-id '../escape' is not a plain folder name (no '/', '\\' or '..', not '.' nor "
                                "empty)"),
    (["--run-id", "."], "--run-id '.' is not a plain folder name"),
    (["--run-id", "/tmp/abs"], "--run-id '/tmp/abs' is not a plain folder name"),
    (["--run-id", "a/b"], "--run-id 'a/b' is not a plain folder name"),
    (["--run-id", ".."], "--run-id '..' is not a plain folder name"),
    (["--out", "FILE"], "' is a file, not a folder; pass --out a folder (created if missing)"),
    (["--out", "FILE/sub"], "' lies under the file '"),
    # sysfs takes no new folders, even from root (whom os.access calls every place writable)
    (["--out", "/sys/sdlora-out"], "'/sys/sdlora-out"),
    (["--checkpoint", "GARBAGE"], "garbage.safetensors': could not read weights"),
    (["--checkpoint", "NAN"], "NaN or inf in the weights file"),
])
def test_flags_that_place_a_run_are_checked_before_anything_is_written(flags, message, tmp_path, capsys):
    _require_cifar()
    if "/sys/sdlora-out" in flags and not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    (tmp_path / "file").write_text("x")
    (tmp_path / "garbage.safetensors").write_bytes(b"\0" * 64)
    subs = {"FILE": str(tmp_path / "file"), "FILE/sub": str(tmp_path / "file" / "sub"),
            "GARBAGE": str(tmp_path / "garbage.safetensors")}
    if "NAN" in flags:
        subs["NAN"] = str(_weights_with(tmp_path, float("nan")))
    flags = [subs.get(f, f) for f in flags]
    out = ["--out", str(tmp_path / "runs")] if "--out" not in flags else []
    before = sorted(tmp_path.rglob("*"))
    err = _cli_error(capsys, CLI + out + (["--run-id", "x"] if "--run-id" not in flags else []) + flags)
    assert message in err and ("--out" in err or "--out" not in flags), err
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, not even an empty one
    assert not Path("/tmp/abs").exists() and not (tmp_path / "escape").exists()


def test_the_lock_is_taken_before_the_benchmark_is_built(tmp_path, monkeypatch, capsys):
    _require_cifar()
    from benchmarks import inputs
    from benchmarks.run_folder import RunFolder

    folder = RunFolder.new(tmp_path, "cifar100-tiny128", "x")
    folder.path.mkdir(parents=True)

    def built(*args, **kwargs):
        raise AssertionError("the benchmark was built before the lock")

    monkeypatch.setattr(inputs, "benchmark_for", built)
    with folder.lock("another command"):
        err = _cli_error(capsys, CLI + ["--out", str(tmp_path), "--run-id", "x"])
    assert f"run folder '{folder.path}' is in use by pid {os.getpid()}" in err


def test_a_pool_worker_writes_nothing_once_its_parent_is_gone(tmp_path, monkeypatch):
    # The guard a --jobs worker installs (benchmarks.pool), with a parent pid that is not this process's: a dead one.
    from avalanche_sdlora import atomic
    from benchmarks import pool

    monkeypatch.setattr(atomic, "_GUARDS", [])  # this process's writes are unguarded again after the test
    atomic.write_text(tmp_path / "before.csv", "x")
    pool._refuse_orphan_writes(parent=-1)
    with pytest.raises(pool.ParentGone):
        atomic.write_text(tmp_path / "part.csv", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.csv"]  # neither the file nor a temporary one


def test_orders_and_findings_report_only_clear_what_a_killed_writer_left(tmp_path):
    from benchmarks import orders
    from benchmarks.findings import command
    from conftest import fake_run

    folders = [fake_run(tmp_path / f"order{s}", {("sdlora", s): [0.9, 0.6]}, class_order_seed=s)
               for s in (1993, 1994)]
    out = tmp_path / "report"
    out.mkdir()
    (out / ".table.md.abc123.tmp").write_text("half")
    orders.main([*map(str, folders), "--out", str(out)])
    assert not list(out.glob(".*"))  # no temporary file, no lock file
    findings = ROOT / "results" / "findings"
    if not (findings / "sources.json").exists():
        pytest.skip("no committed findings folder")
    copy = tmp_path / "findings"
    shutil.copytree(findings, copy)
    (copy / ".README.md.abc123.tmp").write_text("half")
    command.main(["--report-only", "--out", str(copy)])
    assert not list(copy.glob(".*"))


def test_a_terminated_writer_removes_its_temporary_file(tmp_path):
    # What orders and findings --report-only install: SIGTERM mid-write raises, and write_with removes its temporary.
    code = ("import importlib.util, os, signal, sys, time; from pathlib import Path\n"
            "spec = importlib.util.spec_from_file_location('atomic', sys.argv[2])\n"
            "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
            "def write(f):\n    f.write(b'half'); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
            "try:\n    with atomic.remove_temps_on_termination():\n"
            "        atomic.write_with(Path(sys.argv[1]) / 'table.md', write)\nexcept KeyboardInterrupt as e:\n"
            "    print(e)\nprint(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(ROOT / "avalanche_sdlora" / "atomic.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["stopped by signal SIGTERM", "True"], done.stderr  # handler restored
    assert list(tmp_path.iterdir()) == []
