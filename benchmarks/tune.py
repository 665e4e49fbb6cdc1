"""Equal tuning on validation data: ``python -m benchmarks.tune --methods ... [run flags]`` (issue 30).

Every method that trains by gradient gets the same search (its candidates: :mod:`benchmarks.tune_space`), so a
comparison ranks mechanisms rather than recipes:

* the same number of candidates per optimizer: three learning rates half a decade apart (``GRID_DECADES``) around
  the method's own reference learning rate for that optimizer, or, where its reference has none, around the
  protocol's ``--lr`` (SGD) or ``ADAM_ANCHOR`` (Adam), then ``EXTENSION_STEPS`` more, each half a decade past the
  better-scoring end of what that optimizer has tried (:func:`extension`: a fixed 3-point grid left 6 of 10 methods'
  choices at an edge, where a better rate may lie beyond it; adaptive steps per optimizer, the same number for every
  method, reach a decade past the grid without giving any method more candidates); SGD with momentum 0.9 for every method, and Adam
  as well for a method whose reference uses Adam (:func:`optimizers_of`). Every published recipe of a
  method is a candidate: a method's second recipe for one optimizer (DualPrompt's two, SD-LoRA's SGD of the authors'
  code) takes the place of the grid point nearest to it, with its own settings (a recipe is an optimizer, a learning
  rate and the method options its source sets, e.g. DualPrompt's pull constraint and clipping);
* the same data: each candidate trains on the first ``--tune-experiences`` experiences of the stream, on one class
  order (``--tune-order``), with ``--validation-per-class`` training images of each class held out
  (:func:`avalanche_sdlora.data.validation_split`: seeded, the same for every method) and evaluated on them; no test
  image is read (the npz is read per key, and the test keys are never asked for);
* the same choice: the candidate with the highest validation accuracy over the seen classes after the last tuned
  experience (ties: the higher mean over the tuned experiences), a candidate that diverges never chosen.

Each candidate is a :mod:`benchmarks.compare` run folder (``candidates/<method>/<candidate>``), so an interrupted
tuning resumes where it stopped (``--resume``). The command writes ``candidates.csv`` (every score, in percent, and
cost), ``chosen.json`` (the recipe of each method, read by ``compare --tuned``) and ``README.md`` beside them.
Methods that train nothing by gradient (prototype classifiers) have nothing to tune and are listed as such; a variant
that trains with another method's recipe (``recipe_of``: SD-LoRA-RR and -KD, whose first experiences are SD-LoRA's own)
is not tuned twice: its base method is tuned in its place.

Two processes may tune disjoint methods into the same folder (one thread each on a small machine): candidates are
per-method folders and ``failures.json`` is updated per method; a last call over all methods (everything done, so
nothing trains) writes the one ``chosen.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.tune", sys.argv[1:])

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from avalanche_sdlora.atomic import write_text  # noqa: E402
from avalanche_sdlora.data import N_CLASSES  # noqa: E402
from avalanche_sdlora.datasets import PAPER_BENCHMARKS, PAPER_PROTOCOLS  # noqa: E402

from . import compare  # noqa: E402
from .compare import Parser  # noqa: E402
from .config import RunConfig, add_run_flags, config_from_flags, run_flags  # noqa: E402
from .local_paths import portable_record, portable_text  # noqa: E402
from .methods import get_method, method_names  # noqa: E402
from .pool import exit_with_parent  # noqa: E402
from .run_folder import RunFolder  # noqa: E402
from .run_set import EXECUTION_KEYS  # noqa: E402
from .units import in_file_units  # noqa: E402
from . import tune_space as space  # noqa: E402
from .tune_space import Recipe, candidate_count, candidates, extension  # noqa: E402

DEFAULT_VALIDATION_PER_CLASS = 50  # 10 % of CIFAR-100's 500 training images per class
DEFAULT_TUNE_EXPERIENCES = 2
DEFAULT_TUNE_ORDER = 1993  # the first of the paper's class-order seeds
TUNE_SEED = 0
NOT_RUN = "not run yet"  # an Outcome's status before its candidate has trained
DEFAULT_OUT = Path("runs") / "tuning"


# ----------------------------------------------------------------------------------------------- the runs
def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def candidate_config(cfg: RunConfig, method: str, recipe: Recipe, validation_per_class: int,
                     tune_experiences: int, order: int) -> RunConfig:
    """The RunConfig of one candidate: the protocol's, on one class order, validation images, first experiences."""
    kept = tuple(o for o in cfg.method_options if o[0] != method)
    return cfg.replace(class_order="fixed", class_order_seed=order, validation_per_class=validation_per_class,
                       first_experiences=tune_experiences, test_per_class=None,
                       method_options=kept + recipe.method_options(method))


@dataclass
class Outcome:
    method: str
    candidate: str
    optimizer: str
    lr: float
    options: str
    source: str
    status: str  # "done" or "failed: <message>"
    val_acc: float = float("nan")  # seen-class validation accuracy after the last tuned experience
    val_mean_acc: float = float("nan")  # its mean over the tuned experiences (the tie-break)
    train_seconds: float = float("nan")
    eval_seconds: float = float("nan")
    folder: str = ""
    machine: str = ""  # where it trained (its seconds are that machine's): one grid may span two machines

    @property
    def pending(self) -> bool:
        """Not run yet (neither done nor failed): no score to choose by or to extend from."""
        return self.status == NOT_RUN


def _machine(folder: Path) -> str:
    """The machine a candidate trained on, as its run folder recorded it (``device_name``)."""
    return str(RunFolder(folder).read_config().get("device_name") or "")


def _scores(folder: Path) -> dict[str, float]:
    rows = pd.read_csv(folder / "per_task.csv").sort_values("experience")
    return {"val_acc": float(rows["acc_seen"].iloc[-1]), "val_mean_acc": float(rows["acc_seen"].mean()),
            "train_seconds": float(rows["train_seconds"].sum()), "eval_seconds": float(rows["eval_seconds"].sum())}


def _base(method: str, recipe: Recipe, folder: Path) -> dict[str, Any]:
    return dict(method=method, candidate=recipe.key, optimizer=recipe.optimizer, lr=recipe.lr,
                options=json.dumps(dict(recipe.options)), source=recipe.source, folder=folder.name)


def read_outcome(method: str, recipe: Recipe, folder: Path, failures: Mapping[str, Mapping[str, str]]) -> Outcome:
    """The outcome of one candidate as its folder holds it, training nothing: done, failed, or "not run yet"."""
    base = _base(method, recipe, folder)
    if recipe.key in failures.get(method, {}):
        return Outcome(**base, status=f"failed: {failures[method][recipe.key]}")
    if not RunFolder(folder).is_done():
        return Outcome(**base, status=NOT_RUN)
    return Outcome(**base, status="done", **_scores(folder), machine=_machine(folder))


def run_candidate(cfg: RunConfig, method: str, recipe: Recipe, folder: Path, *, quiet: bool, failures: dict) -> Outcome:
    """Train one candidate into ``folder`` (resuming it if it has begun); a failure is recorded, never chosen."""
    run = RunFolder(folder)
    if recipe.key not in failures.get(method, {}) and not run.is_done():
        try:
            compare.run(cfg, [method], [TUNE_SEED], run, quiet=quiet, resume=run.has_config(),
                        command=f"benchmarks.tune candidate {method} {recipe.key}")
        except SystemExit as exc:  # compare names the failure (e.g. a diverging loss); the candidate is out
            message = " ".join(str(exc.code).split())[:300]
            failures.setdefault(method, {})[recipe.key] = message
    return read_outcome(method, recipe, folder, failures)


def method_candidates(method: str, cfg: RunConfig, out: Path, failures: dict, *, train: bool,
                      settings: Mapping[str, Any], quiet: bool = True) -> list[tuple[Recipe, Outcome]]:
    """Every candidate of ``method`` known so far with its outcome: the grid, then per optimizer the extensions whose
    scores they depend on are in (:func:`extension`). ``train``: train each candidate not run yet, in order (else
    report it "not run yet": an extension after it stays unknown)."""
    found: list[tuple[Recipe, Outcome]] = []

    def add(recipe: Recipe) -> None:
        folder = out / "candidates" / method / recipe.key
        if train:
            c_cfg = candidate_config(cfg, method, recipe, settings["validation_per_class"],
                                     settings["tune_experiences"], settings["class_order_seed"])
            o = run_candidate(c_cfg, method, recipe, folder, quiet=quiet, failures=failures)
            _record_failures(out / "failures.json", method, failures.get(method, {}))
            if not quiet:
                print(f"[tune {method}] {recipe.key}: {o.status}, validation accuracy {100 * o.val_acc:.2f}%", flush=True)
        else:
            o = read_outcome(method, recipe, folder, failures)
        found.append((recipe, o))

    grid = candidates(method, cfg)
    for recipe in grid:
        add(recipe)
    for opt in dict.fromkeys(r.optimizer for r in grid):
        for _ in range(space.EXTENSION_STEPS):
            nxt = extension([t for t in found if t[0].optimizer == opt])
            if nxt is None:
                break
            add(nxt)
    return found


def _candidate_worker(job: tuple) -> tuple[str, str, str | None]:
    """One candidate in a spawned process (``--jobs``): trains it into its folder; returns its failure, if any."""
    torch.set_num_threads(1)
    method, recipe, config, folder, quiet = job
    failures: dict[str, dict[str, str]] = {}
    run_candidate(RunConfig.from_json(config), method, recipe, Path(folder), quiet=quiet, failures=failures)
    return method, recipe.key, failures.get(method, {}).get(recipe.key)


def _run_in_parallel(todo: Sequence[tuple[str, Recipe, RunConfig, Path]], jobs: int, quiet: bool,
                     failures: dict[str, dict[str, str]], failures_path: Path) -> None:
    """Train the candidates ``todo`` in ``jobs`` spawned processes, one torch thread each (a many-core machine or a
    GPU shared by several); each candidate's folder is its own, so they never write the same file. Failures are
    recorded as they come; the serial pass after it then only reads the scores."""
    payload = [(m, recipe, c_cfg.to_json(), str(folder), quiet) for m, recipe, c_cfg, folder in todo]
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=exit_with_parent) as executor:
        for future in as_completed([executor.submit(_candidate_worker, job) for job in payload]):
            method, key, failure = future.result()
            if failure is not None:
                failures.setdefault(method, {})[key] = failure
                _record_failures(failures_path, method, failures[method])
            if not quiet:
                print(f"[tune {method}] {key}: {'failed: ' + failure if failure else 'trained'}", flush=True)


def _record_failures(path: Path, method: str, mine: Mapping[str, str]) -> None:
    """Write ``method``'s failed candidates into ``path``, keeping what another process wrote for other methods."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[method] = dict(mine)
    write_json(path, {m: v for m, v in data.items() if v})


def choose(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The candidate with the highest validation accuracy (ties: the higher mean over the tuned experiences)."""
    done = [o for o in outcomes if o.status == "done" and math.isfinite(o.val_acc)]
    return max(done, key=lambda o: (o.val_acc, o.val_mean_acc), default=None)


def grid_edge(best: Outcome, outcomes: Sequence[Outcome]) -> str:
    """``"highest"`` or ``"lowest"`` where ``best`` is the highest or lowest learning rate its optimizer was tried at
    (a better rate may lie beyond the grid, which is the same size for every method, so the report says so), else
    ``""``."""
    lrs = [o.lr for o in outcomes if o.optimizer == best.optimizer]
    if len(lrs) < 2:
        return ""
    return "highest" if best.lr >= max(lrs) else "lowest" if best.lr <= min(lrs) else ""


def _numbers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run flags a folder's candidates must share: all but where they execute (device, threads, workers).

    Each candidate is a run of its own and records its machine (the table's "machine" column), so a grid begun on
    a CPU may be finished on a GPU; a changed protocol, method or data flag still refuses the folder."""
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def tune(cfg: RunConfig, methods: Sequence[str], out: Path, *, validation_per_class: int = DEFAULT_VALIDATION_PER_CLASS,
         tune_experiences: int = DEFAULT_TUNE_EXPERIENCES, order: int = DEFAULT_TUNE_ORDER, quiet: bool = True,
         command: str = "benchmarks.tune", report_only: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Tune every method of ``methods`` into folder ``out`` (resuming what it holds); returns ``chosen.json``'s
    content. Methods that train nothing by gradient are recorded with no candidates. ``report_only``: train nothing,
    write the files from the candidates finished so far (a method with some not run is "incomplete", no choice).
    ``jobs``: candidates trained at once in spawned processes (1: one after another in this one)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"protocol": cfg.protocol, "config": portable_record(cfg.to_json(), out), "validation_per_class": validation_per_class,
                "tune_experiences": tune_experiences, "class_order_seed": order, "seed": TUNE_SEED,
                "grid_decades": list(space.GRID_DECADES), "extension_steps": space.EXTENSION_STEPS,
                "extension_decades": space.EXTENSION_DECADES, "optimizers": list(space.OPTIMIZERS),
                "adam_anchor": space.ADAM_ANCHOR,
                "selection": "highest seen-class validation accuracy after the last tuned experience (ties: mean "
                             "over the tuned experiences); failed candidates are never chosen"}
    settings_path = out / "tuning.json"
    if settings_path.exists():
        saved = json.loads(settings_path.read_text())
        # tuned with fewer extension steps (none: before they existed): its candidates stand, the new steps follow them
        had = saved.get("extension_steps", 0)
        upgraded = (had < space.EXTENSION_STEPS
                    and saved.get("extension_decades", space.EXTENSION_DECADES) == space.EXTENSION_DECADES)
        if upgraded:
            saved.update({k: settings[k] for k in ("extension_steps", "extension_decades")})
        differ = [k for k in settings if k != "config" and saved.get(k) != settings[k]]
        if _numbers_config(saved.get("config", {})) != _numbers_config(json.loads(json.dumps(settings["config"]))):
            differ.append("the run flags")
        if differ:
            raise SystemExit(f"error: '{out}' was tuned with other settings ({', '.join(differ)}); pass the same "
                             "flags to resume it, or another --out folder")
        if upgraded and not report_only:
            print(f"note: '{out}' was tuned with {had} extension step(s) per optimizer; its candidates are kept and "
                  f"the steps up to {space.EXTENSION_STEPS} are added", flush=True)
            write_json(settings_path, {**saved, "config": settings["config"]})
    else:
        write_json(settings_path, settings)
    failures_path = out / "failures.json"
    failures = json.loads(failures_path.read_text()) if failures_path.exists() else {}
    outcomes: list[Outcome] = []
    chosen: dict[str, Any] = {}
    bases = [get_method(m).recipe_of for m in methods if get_method(m).recipe_of]
    methods = list(dict.fromkeys([b for b in bases if b not in methods] + list(methods)))
    trained = [m for m in methods if not get_method(m).recipe_of]
    if jobs > 1 and not report_only:
        for _ in range(1 + space.EXTENSION_STEPS):  # the grids, then each round of extensions (they need the grids' scores)
            todo = [(m, recipe, candidate_config(cfg, m, recipe, validation_per_class, tune_experiences, order),
                     out / "candidates" / m / recipe.key)
                    for m in trained for recipe, o in method_candidates(m, cfg, out, failures, train=False,
                                                                        settings=settings)
                    if o.pending]
            if not todo:
                break
            _run_in_parallel(todo, jobs, quiet, failures, failures_path)
    for method in methods:
        if get_method(method).recipe_of:
            chosen[method] = {"recipe_of": get_method(method).recipe_of, "candidates": 0}
            continue
        found = method_candidates(method, cfg, out, failures, train=not report_only, settings=settings, quiet=quiet)
        mine = [o for _, o in found]
        outcomes += mine
        best = choose(mine)
        total = candidate_count(method, cfg)
        finished = sum(not o.pending for o in mine)
        if not total:
            chosen[method] = {"trains_by_gradient": False, "candidates": 0}
        elif finished < total:
            chosen[method] = {"candidates": total, "incomplete": f"{finished} of {total} run"}
        elif best is not None:
            chosen[method] = {"optimizer": best.optimizer, "lr": best.lr, "options": json.loads(best.options),
                              "source": best.source, "candidate": best.candidate, "val_acc": best.val_acc,
                              "val_mean_acc": best.val_mean_acc, "candidates": total,
                              "grid_edge": grid_edge(best, mine),
                              "tuning_seconds": sum(o.train_seconds + o.eval_seconds for o in mine
                                                    if o.status == "done")}
        else:
            chosen[method] = {"candidates": total, "failed": "every candidate failed"}
    result = {"settings": {k: v for k, v in settings.items() if k != "config"}, "protocol": cfg.protocol,
              "methods": chosen}
    write_json(out / "chosen.json", result)
    _write_table(out, outcomes, result, command, validation_images(cfg, validation_per_class, tune_experiences))
    return result


def validation_images(cfg: RunConfig, validation_per_class: int, tune_experiences: int) -> int:
    """How many validation images score a candidate after the last tuned experience (the seen classes' held-out
    images): what the margins' sampling noise is computed from."""
    bench = PAPER_PROTOCOLS.get(cfg.protocol)
    classes = cfg.classes or (PAPER_BENCHMARKS[bench[0]].n_classes if bench else N_CLASSES)
    return validation_per_class * (classes * min(tune_experiences, cfg.n_experiences) // cfg.n_experiences)


def margins(outcomes: Sequence[Outcome], chosen: Mapping[str, Any], n_images: int) -> list[str]:
    """One sentence per tuned method: the chosen candidate's lead over its best other finished candidate, in
    validation points, marked "within noise" where the lead is under twice the standard error of the difference of
    two independent scores on ``n_images`` images (conservative: both are scored on the same images, which a paired
    test would use, and one training seed adds its own noise)."""
    lines = []
    for method, pick in chosen.items():
        mine = [o for o in outcomes if o.method == method and o.status == "done" and math.isfinite(o.val_acc)]
        best = next((o for o in mine if o.candidate == pick.get("candidate")), None)
        others = sorted((o for o in mine if o is not best), key=lambda o: (o.val_acc, o.val_mean_acc), reverse=True)
        if best is None or not others:
            continue
        lead = 100 * (best.val_acc - others[0].val_acc)
        bound = 200 * math.sqrt(2 * best.val_acc * (1 - best.val_acc) / n_images)
        close = [o.candidate for o in others if 100 * (best.val_acc - o.val_acc) < bound]
        within = f"within it: {', '.join(close)}" if close else "none within it"
        lines.append(f"- {method}: {best.candidate} ({100 * best.val_acc:.2f}) leads {others[0].candidate} by "
                     f"{lead:.2f}; bound {bound:.1f}, {within}")
    return lines


def _write_table(out: Path, outcomes: Sequence[Outcome], result: Mapping[str, Any], command: str,
                 n_images: int | None = None) -> None:
    frame = in_file_units(pd.DataFrame([asdict(o) for o in outcomes]))  # val_acc_pct, val_mean_acc_pct
    write_text(out / "candidates.csv", frame.to_csv(index=False))
    s = result["settings"]
    lines = [f"# Tuning on validation data: {result['protocol']}", "",
             f"Command: `{portable_text(command, out)}`", "",
             f"Each candidate trains seed {s['seed']} on the first {s['tune_experiences']} experiences of class order "
             f"{s['class_order_seed']}, with {s['validation_per_class']} training images per class held out "
             "(avalanche_sdlora.data.validation_split) and scored on them; no test image is read. Candidates per "
             f"method: {len(s['grid_decades'])} learning rates half a decade apart around the method's reference rate, "
             f"then {s.get('extension_steps', 0)} more half a decade past the better-scoring end of those (source "
             "\"extension\"), with SGD (momentum 0.9), and with Adam too where the method's reference uses Adam "
             "(benchmarks/tune.py). Accuracies in %.", "",
             "| method | candidate | source | validation acc | mean over tuned experiences | train s | machine | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        pick = result["methods"].get(o.method, {}).get("candidate") == o.candidate
        acc = f"{100 * o.val_acc:.2f}" if o.status == "done" else o.status
        mean = f"{100 * o.val_mean_acc:.2f}" if o.status == "done" else ""
        secs = f"{o.train_seconds:.0f}" if o.status == "done" else ""
        lines.append(f"| {o.method} | {o.candidate} | {o.source} | {acc} | {mean} | {secs} | {o.machine} | {'**yes**' if pick else ''} |")
    edges = [f"{m} ({v['optimizer']} {v['lr']:.3g}, the {v['grid_edge']} rate tried with {v['optimizer']})"
             for m, v in result["methods"].items() if v.get("grid_edge")]
    if edges:
        lines += ["", "Chosen at an edge of what its optimizer tried, the extension included (a better rate may lie "
                      "beyond it; every method gets the same number of candidates, so none is widened further): "
                      f"{', '.join(edges)}."]
    lead = margins(outcomes, result["methods"], n_images) if n_images else []
    if lead:
        unresolved = sum("none within it" not in line for line in lead)
        lines += ["", f"How far each choice is resolved: the chosen candidate's lead over the best other, in validation "
                      f"points. Each candidate is one seed scored on {n_images} validation images; the bound is twice "
                      "the standard error of the difference of two independent scores at the chosen one's accuracy "
                      "(conservative for the images, as both are scored on the same ones; a second training seed's "
                      "noise is not in it), and a candidate within it could as well have been chosen. Another "
                      f"candidate is within it for {unresolved} of {len(lead)} methods.", "", *lead]
    untuned = [m for m, v in result["methods"].items() if v.get("trains_by_gradient") is False]
    if untuned:
        lines += ["", f"Nothing to tune (no training by gradient): {', '.join(untuned)}."]
    shared = [f"{m} (that of {v['recipe_of']})" for m, v in result["methods"].items() if v.get("recipe_of")]
    if shared:
        lines += ["", f"Trained with another method's tuned recipe, as in its paper: {', '.join(shared)}."]
    write_text(out / "README.md", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- the command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", required=True, help="methods to tune")
    # the candidates' own settings are this command's flags below, not the run flags of the same fields
    add_run_flags(p, only=[f.dest for f in run_flags() if f.dest not in ("validation_per_class", "first_experiences")])
    p.add_argument("--validation-per-class", dest="tune_validation", type=int, default=DEFAULT_VALIDATION_PER_CLASS,
                   help="training images per class held out for validation (default: "
                        f"{DEFAULT_VALIDATION_PER_CLASS})")
    p.add_argument("--tune-experiences", type=int, default=DEFAULT_TUNE_EXPERIENCES,
                   help=f"experiences each candidate trains (default: {DEFAULT_TUNE_EXPERIENCES})")
    p.add_argument("--tune-order", type=int, default=DEFAULT_TUNE_ORDER,
                   help=f"the class-order seed the candidates train on (default: {DEFAULT_TUNE_ORDER})")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results root; the tuning goes to <out>/<protocol>/<run-id>")
    p.add_argument("--run-id", default="tuned", help="folder name (default: tuned); an existing one is resumed")
    p.add_argument("--verbose", action="store_true", help="print each candidate's result")
    p.add_argument("--jobs", type=int, default=1,
                   help="candidates trained at once, each in its own process with one torch thread (default: 1)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write candidates.csv, chosen.json and README.md from the candidates finished "
                        "so far (methods with candidates not run yet are marked incomplete, with no choice)")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods if m not in method_names()]
    if unknown:
        p.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(method_names())}")
    for flag, value in (("--validation-per-class", args.tune_validation), ("--tune-experiences", args.tune_experiences)):
        if value <= 0:
            p.error(f"{flag} must be a positive integer, got {value}")
    if args.jobs < 1:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    if not args.run_id or any(c in args.run_id for c in "/\\") or args.run_id in (".", ".."):
        p.error(f"--run-id must be a plain folder name, got {args.run_id!r}")
    try:
        args.config = config_from_flags(args)
        if args.tune_experiences > args.config.n_experiences:
            raise ValueError(f"--tune-experiences {args.tune_experiences} is more than the stream's "
                             f"{args.config.n_experiences} experiences; pass at most {args.config.n_experiences}")
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) / args.config.protocol / args.run_id
    command = " ".join(["python -m benchmarks.tune"] + (argv if argv is not None else sys.argv[1:]))
    result = tune(args.config, args.methods, out, validation_per_class=args.tune_validation,
                  tune_experiences=args.tune_experiences, order=args.tune_order, quiet=not args.verbose,
                  report_only=args.report_only, command=command, jobs=args.jobs)
    print((out / "README.md").read_text())
    for method, pick in result["methods"].items():
        if "optimizer" in pick:
            print(f"{method}: {pick['optimizer']} lr {pick['lr']:.3g} {pick['options'] or ''} ({pick['source']})")
    print(f"use it: python -m benchmarks.compare --tuned {out / 'chosen.json'} ...")
    return out


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
