"""The runs the findings read, and the models in their checkpoints.

Every model the findings analyse was trained by the harness: comparison runs by :func:`benchmarks.compare.run`
(given with ``--runs`` / ``--paper-runs``, or trained here into ``<out>/runs/``), single-task LoRAs by
:func:`benchmarks.runner.run` on one experience of the protocol's stream. Nothing here has a training loop.
A model after experience ``i`` is rebuilt exactly as ``--resume`` rebuilds it: the method's builder on the run's
own ``config.json``, then its checkpoint ``checkpoints/<method>-seed<k>/exp<i>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from types import SimpleNamespace

import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora.checkpoint import load_checkpoint

from .. import compare, inputs, runner
from ..config import SEED_MAX, RunConfig
from ..identity import identity_changes, run_identity, saved_identity
from ..methods import get_method, method_names
from ..presets import PAPER
from ..protocols import PROTOCOL_FIELDS
from ..run_folder import RunFolder

# The comparison rows each finding reads (Finding 2 reads SD-LoRA; 1(b) the fixed direction against both).
COMPARISON_METHODS: dict[str, tuple[str, ...]] = {
    "f1a": (), "f1b": ("sdlora", "seq-lora", "sdlora-fixed-direction"), "f2": ("sdlora",), "f3": ("sdlora", "seq-lora")}
FINDINGS = tuple(COMPARISON_METHODS)
SINGLE_TASK_METHOD = "seq-lora"  # Finding 1(a): one rank-r q/v LoRA per task, seq-lora's recipe, from W0
TASK_INITS = ("same", "distinct")
# The settings a given run folder must share with this call (what the data, the model and the training are).
SHARED_SETTINGS = (*PROTOCOL_FIELDS, "classes", "test_per_class")


# The paper's recipe is benchmarks.presets.PAPER (one place, with each value's source); the options a findings
# report checks a paper-recipe run against (rank_schedule is RR's only, and the findings train no RR run).
PAPER_OPTIONS = {k: s.value for k, s in PAPER.options.items() if k != "rank_schedule"}
PAPER_OPTIMIZER = (PAPER.optimizer.value, PAPER.lr.value)


def paper_recipe(cfg: RunConfig) -> RunConfig:
    """SD-LoRA under the paper's recipe, for Finding 2: ``cfg`` under ``--preset paper`` (Adam at lr 8e-3, magnitudes
    initialised to 1 and kept, unit-Frobenius directions, the current pair normalised while it trains;
    :data:`benchmarks.presets.PAPER`), the protocol's epochs and batch size unchanged."""
    return cfg.replace(**PAPER.fields(cfg.protocol))


def methods_for(findings: Iterable[str]) -> list[str]:
    """The comparison methods the chosen findings read, in table order."""
    wanted = {m for f in findings for m in COMPARISON_METHODS[f]}
    return [m for m in method_names() if m in wanted]


def comparison_folder(out, cfg: RunConfig, name: str) -> RunFolder:
    """Where the findings keep a comparison they train themselves: ``<out>/runs/<protocol>/<name>``."""
    return RunFolder.new(out / "runs", cfg.protocol, name)


def train_comparison(cfg: RunConfig, methods: Sequence[str], seeds: Sequence[int], folder: RunFolder, *,
                     jobs: int, quiet: bool, command: str) -> RunFolder:
    """``benchmarks.compare.run`` into ``folder``, continuing it if it exists (finished runs are kept; a finished
    folder holding every (method, seed) asked for is left as it is), keeping every experience's checkpoint."""
    cfg = cfg.replace(keep_checkpoints="all")  # the findings read the model after each experience
    if folder.has_config():
        identity = run_identity(inputs.resolved(cfg), 1 if jobs > 1 else torch.get_num_threads())
        changed, _ = identity_changes(saved_identity(folder.read_config()), identity)
        if changed:
            raise SystemExit(f"error: '{folder}' holds runs the findings trained with other settings: "
                             f"{'; '.join(changed)}; pass the run's values or another --out")
        if folder.is_done() and all(folder.part_complete(m, s, cfg.n_experiences) for m in methods for s in seeds):
            return folder
    compare.run(cfg, list(methods), list(seeds), folder, jobs=jobs, quiet=quiet, resume=folder.has_config(),
                command=command)
    return folder


def given_folders(paths: Sequence[str], flag: str, methods: Sequence[str],
                  cfg: RunConfig) -> dict[str, tuple[RunFolder, list[int]]]:
    """Comparison folders named on the command line, checked: {method: (the first folder with a finished run of it,
    that folder's finished seeds of it)}.

    Their data, model and training settings must be this call's (the single-task LoRAs, trained with this call's,
    are compared with them); each method needs at least one finished seed in one of them.
    """
    folders = []
    for path in paths:
        folder = RunFolder(path)
        if not folder.has_config():
            raise SystemExit(f"error: {flag} '{path}' is not a run folder of benchmarks.compare (no config.json)")
        saved = RunConfig.from_json(folder.read_config())
        differ = [f"--{k.replace('_', '-')}: the run's {getattr(saved, k)!r}, this call's {getattr(cfg, k)!r}"
                  for k in SHARED_SETTINGS if getattr(saved, k) != getattr(cfg, k)]
        if differ:
            raise SystemExit(f"error: {flag} '{path}' ran with other settings than this call: {'; '.join(differ)}; "
                             "pass the run's values (the findings train their other runs with this call's settings)")
        folders.append((folder, saved.n_experiences))
    runs = {}
    for m in methods:
        found = [(f, s) for f, n in folders if (s := finished_seeds(f, m, n))]
        if found:
            runs[m] = found[0]
    missing = [m for m in methods if m not in runs]
    if missing:
        where = f"'{paths[0]}'" if len(paths) == 1 else f"any of {', '.join(repr(p) for p in paths)}"
        raise SystemExit(f"error: {flag} {where} has no finished run of {', '.join(missing)}; add it with "
                         f"python -m benchmarks.compare --resume {paths[0]} --methods {' '.join(missing)} --seeds ..., "
                         f"or name a folder that holds it")
    return runs


def finished_seeds(folder: RunFolder, method: str, n_experiences: int) -> list[int]:
    """Seeds of ``method`` whose part reached the last experience."""
    found = sorted(s for m, s in folder.part_names() if m == method)
    return [s for s in found if folder.part_complete(method, s, n_experiences)]


# ------------------------------------------------------------------------------------------- single-task LoRAs
def single_task_folder(out, cfg: RunConfig, task: int, init: str) -> RunFolder:
    return RunFolder.new(out / "runs", cfg.protocol, f"single-task-{init}-t{task}")


def task_seed(seed: int, task: int, init: str) -> int:
    """The seed of task ``task``'s LoRA: the run's seed for every task ('same': one initial pair and head draw for
    all tasks, so their updates differ only by their data), or one per task ('distinct')."""
    return seed if init == "same" else (seed + 100_003 * (task + 1)) % (SEED_MAX + 1)


def one_experience(benchmark, task: int) -> SimpleNamespace:
    """The protocol's experience ``task`` alone, as the benchmark ``runner.run`` trains (its test experience too)."""
    return SimpleNamespace(train_stream=benchmark.train_stream[task:task + 1],
                           test_stream=benchmark.test_stream[task:task + 1])


def train_single_task(cfg: RunConfig, benchmark, task: int, seeds: Sequence[int], init: str, folder: RunFolder, *,
                      quiet: bool, command: str) -> RunFolder:
    """``seq-lora`` from the pretrained weights on experience ``task`` only, per seed, into ``folder``.

    One writer at a time (the folder's lock); a folder trained with other settings is refused by name, as
    ``--resume`` refuses it; finished seeds are kept.
    """
    identity = run_identity(cfg, torch.get_num_threads())
    folder.path.mkdir(parents=True, exist_ok=True)
    with folder.lock(command):
        folder.clean(quiet)
        if folder.has_config():
            saved = folder.read_config()
            changed, _ = identity_changes(saved_identity(saved), identity)
            if saved.get("task") != task or saved.get("task_init") != init:
                changed.append(f"the task: the run's {saved.get('task')} ({saved.get('task_init')}), this call's "
                               f"{task} ({init})")
            if changed:
                raise SystemExit(f"error: '{folder}' holds single-task LoRAs trained with other settings: "
                                 f"{'; '.join(changed)}; pass the run's values or another --out")
            done = list(saved.get("seeds", []))
        else:
            done = []
        all_seeds = sorted(set(done) | {task_seed(s, task, init) for s in seeds})
        folder.write_config({**cfg.to_json(), "methods": [SINGLE_TASK_METHOD], "seeds": all_seeds, "task": task,
                             "task_init": init, "recipes": {SINGLE_TASK_METHOD: vars(get_method(SINGLE_TASK_METHOD)
                                                                                     .recipe(cfg))},
                             "identity": identity, "command": command})
        sub = one_experience(benchmark, task)
        trained = False
        for seed in seeds:
            s = task_seed(seed, task, init)
            if folder.part_complete(SINGLE_TASK_METHOD, s, 1):
                continue
            trained = True
            if not quiet:
                print(f"finding 1(a): {SINGLE_TASK_METHOD} on task {task} alone, seed {s}", flush=True)
            runner.run(SINGLE_TASK_METHOD, s, cfg, sub, folder, quiet=True,
                       resume=folder.part(SINGLE_TASK_METHOD, s).exists())
        if trained or not folder.per_task_path.exists():
            folder.write_reports()
    return folder


# ------------------------------------------------------------------------------------------- models
_BENCHMARKS: dict[str, object] = {}


def benchmark_for(cfg: RunConfig):
    """The run's Avalanche benchmark (built once per data setting in this process)."""
    key = repr(sorted((k, v) for k, v in cfg.to_json().items() if k in SHARED_SETTINGS or k == "data"))
    if key not in _BENCHMARKS:
        _BENCHMARKS[key] = inputs.make_benchmark(cfg)
    return _BENCHMARKS[key]


def quiet_evaluator(*metrics) -> EvaluationPlugin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        return EvaluationPlugin(*metrics, loggers=[])


def folder_config(folder: RunFolder) -> RunConfig:
    """The run's config with its inputs found here (a folder records them by identity, not path)."""
    return inputs.resolved(RunConfig.from_json(folder.read_config()))


def build_strategy(folder: RunFolder, method: str, plugins: Sequence = (), seed: int | None = None):
    """The method's strategy as the run built it (its config.json), no checkpoint loaded: the model holds no task.
    ``seed``: the run of that seed (needed under ``--class-order seed``, where each seed has its own class order)."""
    cfg = folder_config(folder).fixed_order(seed)
    return get_method(method).build(cfg, runner.num_classes(benchmark_for(cfg)), quiet_evaluator(), list(plugins))


def load_model(folder: RunFolder, method: str, seed: int, experience: int):
    """The model of (method, seed) after ``experience``, from its checkpoint (exactly what was evaluated then)."""
    ckpt = folder.checkpoints(method, seed)
    if not (ckpt / f"exp{experience}.json").exists():
        raise SystemExit(f"error: '{folder}' has no checkpoint of {method} seed {seed} after experience {experience} "
                         f"('{ckpt / f'exp{experience}.json'}'); checkpoints are not committed, and benchmarks.compare keeps "
                         "only the last two unless run with --keep-checkpoints all: run the findings without "
                         "--runs/--paper-runs to train them, or pass a run folder that holds them")
    model = build_strategy(folder, method, seed=seed).model
    load_checkpoint(ckpt, experience, model, config={"method": method, "seed": seed})
    return model.eval()
