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
  experience (ties: the higher mean over the tuned experiences), a candidate that diverges never chosen;
* optionally (``--confirm-experiences K``), a second stage: the choice and the candidates within its validation noise
  train again on the first K experiences and the best of them after K is chosen, into ``chosen-confirm<K>.json``
  beside ``chosen.json`` (:mod:`benchmarks.tune_confirm`).

Each candidate is a :mod:`benchmarks.compare` run folder (``candidates/<method>/<candidate>``,
:mod:`benchmarks.tune_runs`), so an interrupted
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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.tune", sys.argv[1:])

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from avalanche_sdlora.atomic import write_text  # noqa: E402

from .compare import Parser  # noqa: E402
from .config import RunConfig, add_run_flags, config_from_flags, run_flags  # noqa: E402
from .local_paths import portable_record, portable_text  # noqa: E402
from .methods import get_method, method_names  # noqa: E402
from .run_set import EXECUTION_KEYS  # noqa: E402
from .units import in_file_units  # noqa: E402
from . import tune_space as space  # noqa: E402
from .tune_confirm import (confirm_candidates, confirm_file, confirm_outcomes, confirm_stage, margins,  # noqa: E402
                           second_stage, validation_images)
from .tune_runs import (TUNE_SEED, Outcome, candidate_config, choose, read_outcome, record_failures,  # noqa: E402
                        run_candidate, run_in_parallel, write_json)
from .tune_space import Recipe, candidate_count, candidates, extension  # noqa: E402

DEFAULT_VALIDATION_PER_CLASS = 50  # 10 % of CIFAR-100's 500 training images per class
DEFAULT_TUNE_EXPERIENCES = 2
DEFAULT_TUNE_ORDER = 1993  # the first of the paper's class-order seeds
DEFAULT_OUT = Path("runs") / "tuning"


# ----------------------------------------------------------------------------------------------- the runs
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
            record_failures(out / "failures.json", method, failures.get(method, {}))
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
         command: str = "benchmarks.tune", report_only: bool = False, jobs: int = 1,
         confirm_experiences: int | None = None) -> dict[str, Any]:
    """Tune every method of ``methods`` into folder ``out`` (resuming what it holds); returns ``chosen.json``'s
    content. Methods that train nothing by gradient are recorded with no candidates. ``report_only``: train nothing,
    write the files from the candidates finished so far (a method with some not run is "incomplete", no choice).
    ``jobs``: candidates trained at once in spawned processes (1: one after another in this one).
    ``confirm_experiences``: a second stage, where the first choice and the candidates within its validation noise
    (:func:`ties`) train on that many experiences and the best of them is chosen (None: one stage). It is not part of
    ``tuning.json``: a finished first stage takes a second one, of any length, without training again."""
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
    n_images = validation_images(cfg, validation_per_class, tune_experiences)
    outcomes: list[Outcome] = []
    confirmed: list[Outcome] = []
    stage2: dict[str, Any] = {}
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
            run_in_parallel(todo, jobs, quiet, failures, failures_path)
        if confirm_experiences:  # the second stage, of the methods whose first stage is finished
            stage = confirm_stage(confirm_experiences)
            todo = []
            for m in trained:
                found = method_candidates(m, cfg, out, failures, train=False, settings=settings)
                if any(o.pending for _, o in found) or len(found) < candidate_count(m, cfg):
                    continue
                pairs = confirm_candidates(m, found, n_images)
                second = confirm_outcomes(m, cfg, out, pairs, failures, settings=settings,
                                          experiences=confirm_experiences, train=False) if len(pairs) > 1 else []
                todo += [(m, r, candidate_config(cfg, m, r, validation_per_class, confirm_experiences, order),
                          out / "confirm" / stage / m / r.key) for (r, _), o in zip(pairs, second) if o.pending]
            if todo:
                run_in_parallel(todo, jobs, quiet, failures, failures_path, stage)
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
            chosen[method] = _record(best, mine, total)
            if confirm_experiences:
                pairs = confirm_candidates(method, found, n_images)
                second = confirm_outcomes(method, cfg, out, pairs, failures, settings=settings,
                                          experiences=confirm_experiences, train=not report_only,
                                          quiet=quiet) if len(pairs) > 1 else []
                confirmed += second
                done = sum(not o.pending for o in second)
                pick = choose(second) if second else best
                if done < len(second):
                    stage2[method] = {"candidates": total, "incomplete": f"second stage: {done} of {len(second)} run"}
                elif pick is None:
                    stage2[method] = {"candidates": total, "failed": "every second-stage candidate failed"}
                else:
                    stage2[method] = {**_record(pick, [*mine, *second], total, grid=mine),
                                      "confirmed": {"experiences": confirm_experiences, "first_choice": best.candidate,
                                                    "first_val_acc": best.val_acc,
                                                    "among": [o.candidate for o in second] or [best.candidate]}}
        else:
            chosen[method] = {"candidates": total, "failed": "every candidate failed"}
    kept = {k: v for k, v in settings.items() if k != "config"}
    result = {"settings": kept, "protocol": cfg.protocol, "methods": chosen}
    write_json(out / "chosen.json", result)
    second_result = None
    if confirm_experiences:  # beside chosen.json, never over it: the first stage's choice stays usable
        second_result = {"settings": {**kept, "confirm_experiences": confirm_experiences}, "protocol": cfg.protocol,
                         "methods": {m: stage2.get(m, v) for m, v in chosen.items()}}
        write_json(out / confirm_file(confirm_experiences), second_result)
    _write_table(out, outcomes, result, command, n_images, confirmed, second_result)
    return second_result or result


def _record(pick: Outcome, outcomes: Sequence[Outcome], total: int, grid: Sequence[Outcome] | None = None
            ) -> dict[str, Any]:
    """A method's entry in chosen.json: the recipe ``pick`` stands for, its score, and what its tuning cost (every
    finished run of ``outcomes``); ``grid``: the first stage's candidates, for :func:`grid_edge`."""
    return {"optimizer": pick.optimizer, "lr": pick.lr, "options": json.loads(pick.options), "source": pick.source,
            "candidate": pick.candidate, "val_acc": pick.val_acc, "val_mean_acc": pick.val_mean_acc,
            "candidates": total, "grid_edge": grid_edge(pick, list(grid if grid is not None else outcomes)),
            "tuning_seconds": sum(o.train_seconds + o.eval_seconds for o in outcomes if o.status == "done")}


def _write_table(out: Path, outcomes: Sequence[Outcome], result: Mapping[str, Any], command: str,
                 n_images: int | None = None, confirmed: Sequence[Outcome] = (),
                 second: Mapping[str, Any] | None = None) -> None:
    frame = in_file_units(pd.DataFrame([o.record() for o in outcomes]))  # val_acc_pct, val_mean_acc_pct
    write_text(out / "candidates.csv", frame.to_csv(index=False))
    if confirmed:
        write_text(out / "confirm.csv", in_file_units(pd.DataFrame([o.record() for o in confirmed])).to_csv(index=False))
    else:  # one of an earlier call with another --confirm-experiences (or none now) would describe another choice
        (out / "confirm.csv").unlink(missing_ok=True)
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
    lead = margins(outcomes, n_images) if n_images else []
    if lead:
        unresolved = sum("none within it" not in line for line in lead)
        lines += ["", f"How far each choice is resolved: the chosen candidate's lead over the best other, in validation "
                      f"points. Each candidate is one seed scored on {n_images} validation images; the bound is twice "
                      "the standard error of the difference of two independent scores at the chosen one's accuracy "
                      "(conservative for the images, as both are scored on the same ones; a second training seed's "
                      "noise is not in it), and a candidate within it could as well have been chosen. Another "
                      f"candidate is within it for {unresolved} of {len(lead)} methods."
                      + (" A paired bound is used where both candidates kept their per-image predictions "
                         "(`predictions/` of their run folders): twice the standard error of the per-image "
                         "differences on the same validation images, which their shared errors make tighter."
                         if any("paired bound" in line for line in lead) else ""), "", *lead]
    lines += second_stage(outcomes, second, confirmed) if second else []
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
    p.add_argument("--confirm-experiences", type=int, default=None, metavar="K",
                   help="a second stage: the first choice and the candidates within its validation noise (the "
                        "README's bound) train again on the first K experiences, and the best of them after K is "
                        "chosen; K above --tune-experiences (default: none, one stage). A finished first stage "
                        "takes it without training again")
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
        k = args.confirm_experiences
        n = args.config.n_experiences
        if k is not None and args.tune_experiences >= n:
            raise ValueError(f"--confirm-experiences {k}: --tune-experiences {args.tune_experiences} already trains "
                             f"all {n} experiences of the stream; drop --confirm-experiences")
        if k is not None and not args.tune_experiences < k <= n:
            raise ValueError(f"--confirm-experiences {k} must lie above --tune-experiences {args.tune_experiences} "
                             f"and at most at the stream's {n} experiences; pass e.g. "
                             f"--confirm-experiences {min(2 * args.tune_experiences, n)}")
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
                  report_only=args.report_only, command=command, jobs=args.jobs,
                  confirm_experiences=args.confirm_experiences)
    print((out / "README.md").read_text())
    for method, pick in result["methods"].items():
        if "optimizer" in pick:
            print(f"{method}: {pick['optimizer']} lr {pick['lr']:.3g} {pick['options'] or ''} ({pick['source']})")
    k = args.confirm_experiences
    print(f"use it: python -m benchmarks.compare --tuned {out / (confirm_file(k) if k else 'chosen.json')} ...")
    return out


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
