"""The paper's three findings, measured: ``python -m benchmarks.findings [compare's flags] [--seeds ...]``.

Writes tidy CSVs, plots and a README (claim, measurement, verdict per finding) to ``--out`` (default
runs/findings; ``results/findings`` is the README's). The runs it reads, trained here into ``<out>/runs/`` unless
given: a comparison of ``sdlora``, ``seq-lora`` and ``sdlora-fixed-direction`` (``--runs RUN_DIR``: a compare run
folder holding them, with checkpoints), SD-LoRA under the paper's recipe (``--paper-runs RUN_DIR``), and one
``seq-lora`` LoRA per task trained on that task alone from the pretrained weights (always here). Interrupted, it
continues where it stopped (every run resumes; finished ones are kept). ``--report-only`` rebuilds the plots and
the README from the CSVs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from avalanche_sdlora import SDLoRAOptions
from avalanche_sdlora.atomic import remove_stale_temps, remove_temps_on_termination, write_text

from .. import compare, inputs
from ..config import add_run_flags, check_seeds, config_from_flags
from ..local_paths import portable_record, portable_text
from ..methods import check_method_options
from ..reports import write_csv
from ..run_folder import RunFolder, RunLock
from ..units import in_file_units
from . import report
from .directions import alpha_rows, residual_rows
from .interpolation import interpolation_rows, points
from .low_loss import dense_update, distance_rows, fixed_direction_runs
from .sources import (COMPARISON_METHODS, FINDINGS, SINGLE_TASK_METHOD, TASK_INITS, benchmark_for, comparison_folder,
                      folder_config, given_folders, load_model, methods_for, paper_recipe, single_task_folder, task_seed,
                      train_comparison, train_single_task)

DEFAULT_OUT = Path("runs/findings")
SETTINGS_SHOWN = ("protocol", "model", "img_size", "train_per_class", "epochs", "batch_size", "lr", "n_experiences",
                  "classes", "test_per_class")


def parse_args(argv: list[str] | None = None):
    p = compare.Parser(prog="python -m benchmarks.findings", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the runs trained here (default: 0)")
    add_run_flags(p)
    p.add_argument("--runs", metavar="RUN_DIR", nargs="+", help="benchmarks.compare run folders holding sdlora, "
                   "seq-lora and sdlora-fixed-direction (Finding 1(b) reads their rows; 2 and 3 their checkpoints): "
                   "each method is read from the first folder with a finished run of it, all its finished seeds; "
                   "their settings must be this call's; default: train them into OUT/runs with --seeds")
    p.add_argument("--paper-runs", metavar="RUN_DIR", help="a benchmarks.compare run folder with sdlora under the "
                   "paper's recipe (Finding 2); default: train it into OUT/runs with findings.sources.paper_recipe")
    p.add_argument("--only", nargs="+", choices=FINDINGS, default=list(FINDINGS),
                   help="the findings to compute (default: all); the others' CSVs in OUT are kept")
    p.add_argument("--points", type=int, default=11, help="points on the interpolation path, ends included (default: 11)")
    p.add_argument("--task-init", choices=TASK_INITS, default="same", help="Finding 1(a): every task's LoRA from "
                   "the run's seed ('same' initial pair) or from one seed per task ('distinct')")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="findings folder (default: runs/findings, ignored by git; "
                   "results/findings is the README's)")
    p.add_argument("--jobs", type=int, default=1, help="(method, seed) runs of a comparison in parallel processes")
    p.add_argument("--report-only", action="store_true", help="only rebuild the summaries, plots and README.md from "
                   "the CSVs in OUT")
    p.add_argument("--quiet", action="store_true", help="no per-experience progress lines")
    args = p.parse_args(argv)
    if args.points < 2:
        p.error(f"--points must be at least 2 (the two models), got {args.points}")
    if args.jobs <= 0:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    try:
        check_seeds(args.seeds)
        args.config = config_from_flags(args)
        check_method_options(args.config.method_options)
    except ValueError as exc:
        p.error(str(exc))
    if args.config.n_experiences < 2 and {"f2", "f3"} & set(args.only):
        p.error("--n-experiences must be at least 2 for Findings 2 and 3 (they compare tasks)")
    return args


def _costs(runs: dict[str, tuple[RunFolder, list[int]]]) -> dict:
    """What the source runs are and cost: their folders, methods and seeds, seconds summed over their parts, their
    recipes (the SD-LoRA options are those of the folder the ``sdlora`` rows come from, else the first)."""
    folders = list(dict.fromkeys(f for f, _ in runs.values()))
    gathered = {f: f.gather() for f in folders}
    train = evaluate = 0.0
    for m, (folder, seeds) in runs.items():
        rows = gathered[folder]
        rows = rows[(rows["method"] == m) & rows["seed"].isin(seeds)]
        train, evaluate = train + float(rows["train_seconds"].sum()), evaluate + float(rows["eval_seconds"].sum())
    configs = {m: f.read_config() for m, (f, _) in runs.items()}
    main = configs.get("sdlora", next(iter(configs.values())))
    return {"folders": [str(f) for f in folders], "methods": list(runs),
            "seeds": {m: list(map(int, s)) for m, (_, s) in runs.items()},
            "folder_of": {m: str(f) for m, (f, _) in runs.items()} if len(folders) > 1 else None,
            "train_seconds": train, "eval_seconds": evaluate,
            "threads": main["identity"].get("threads"),
            "sdlora": main["sdlora"],
            "recipes": {m: c.get("recipes", {}).get(m) for m, c in configs.items()}}


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        if not out.is_dir():
            raise SystemExit(f"error: --report-only: '{out}' is not a findings folder; pass its --out")
        # One writer at a time, which clears what a killed one left (its temporary files) before writing.
        with remove_temps_on_termination(), RunLock(out, " ".join(["python -m benchmarks.findings", *argv])):
            remove_stale_temps(out)
            verdicts = report.write(out)
        print(verdicts[["finding", "case", "verdict"]].to_string(index=False))
        return out
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(["python -m benchmarks.findings", *argv])
    cfg = inputs.resolved(args.config)
    with _kept_only_if_written(out):
        sources_path = out / "sources.json"
        sources = json.loads(sources_path.read_text()) if sources_path.exists() else {}
        # Every call that wrote into the folder, oldest first: a folder built by several calls (e.g. --only f2 f3 on
        # given runs, then --only f1a) names each; "command" is the last one's.
        calls = sources.get("calls", [])
        # The same command again (a rerun over the same runs) is one call, at its latest place (compared as the file
        # records commands: with portable paths, benchmarks.local_paths).
        calls = [c for c in calls if c.get("command") != portable_text(command, out)]
        sources.update(command=command, calls=[*calls, {"command": command, "only": list(args.only)}],
                       settings={k: getattr(cfg, k) for k in SETTINGS_SHOWN})
        sources.setdefault("analysis_seconds", {})
        only = [f for f in FINDINGS if f in args.only]

        def comparison_runs(run_cfg, methods, name, given, flag, findings):
            """{method: (folder, its seeds)} of a comparison: the given folders' finished seeds, or trained here."""
            if given:
                runs = given_folders(given, flag, methods, cfg)
            else:
                folder = comparison_folder(out, run_cfg, name)
                train_comparison(run_cfg, methods, args.seeds, folder, jobs=args.jobs, quiet=args.quiet,
                                 command=f"{command}  # {name}")
                runs = {m: (folder, list(args.seeds)) for m in methods}
            # Keyed by the findings that read it: a later call on other findings and other runs adds its own entry.
            key = report.source_key(name, findings)
            for stale in [k for k, v in sources.items() if isinstance(v, dict)
                          and set(v.get("findings", ())) <= set(findings) and report.source_name(k) == name]:
                del sources[stale]
            sources[key] = {**_costs(runs), "findings": list(findings), "trained_here": not given}
            return runs

        # Training first (each run resumes where an interrupted call left it), then the analyses.
        if methods_for(only):
            reading = [f for f in only if COMPARISON_METHODS[f]]
            comparison = comparison_runs(cfg, methods_for(only), "comparison", args.runs, "--runs", reading)
        if "f2" in only:
            paper = comparison_runs(paper_recipe(cfg), ["sdlora"], "paper", args.paper_runs, "--paper-runs", ["f2"])
        if "f1a" in only:
            finding_1a(cfg, args, out, sources, command)
        if "f1b" in only:
            finding_1b({m: comparison[m] for m in methods_for(["f1b"])}, out)
        if "f2" in only:
            t0 = time.perf_counter()
            finding_2([comparison["sdlora"], paper["sdlora"]], out)
            sources["analysis_seconds"]["f2"] = time.perf_counter() - t0
        if "f3" in only:
            t0 = time.perf_counter()
            rows = [{"method": m, **r} for m in methods_for(["f3"]) for seed in comparison[m][1]
                    for r in interpolation_rows(comparison[m][0], m, seed, points(args.points))]
            write_csv(in_file_units(pd.DataFrame(rows)), out / report.CSV["f3"])  # accuracy_pct
            sources["analysis_seconds"]["f3"] = time.perf_counter() - t0
        write_text(sources_path, json.dumps(portable_record(sources, out), indent=2) + "\n")
        verdicts = report.write(out)
        if not args.quiet:
            print(verdicts[["finding", "case", "verdict"]].to_string(index=False))
        print(f"findings in {out}", flush=True)
        return out


@contextlib.contextmanager
def _kept_only_if_written(out: Path):
    """Create ``out`` for this call; a call refused before writing anything (e.g. a --runs folder without the
    method) removes it again rather than leave an empty findings folder behind."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise


def finding_1a(cfg, args, out: Path, sources: dict, command: str) -> None:
    """One seq-lora LoRA per task, each trained on that task alone from W0; their pairwise and W0 distances."""
    init = args.task_init
    benchmark = benchmark_for(cfg)
    folders = [single_task_folder(out, cfg, t, init) for t in range(cfg.n_experiences)]
    for t, folder in enumerate(folders):
        train_single_task(cfg, benchmark, t, args.seeds, init, folder, quiet=args.quiet,
                          command=f"{command}  # finding 1(a), task {t}")
    t0, rows = time.perf_counter(), []
    for seed in args.seeds:
        updates = {t: dense_update(load_model(f, SINGLE_TASK_METHOD, task_seed(seed, t, init), 0))
                   for t, f in enumerate(folders)}
        rows += [{"task_init": init, "seed": seed, **r} for r in distance_rows(updates)]
    sources["analysis_seconds"]["f1a"] = time.perf_counter() - t0
    _merge_csv(out / report.CSV["f1a"], pd.DataFrame(rows), "task_init")
    costs = [_costs({SINGLE_TASK_METHOD: (f, [task_seed(s, t, init) for s in args.seeds])})
             for t, f in enumerate(folders)]
    sources[f"single-task LoRAs, task init {init}"] = {
        **costs[0], "folders": [str(f) for f in folders], "seeds": list(args.seeds), "task_init": init,
        "trained_here": True, "train_seconds": sum(c["train_seconds"] for c in costs),
        "eval_seconds": sum(c["eval_seconds"] for c in costs)}


def finding_1b(runs: dict[str, tuple[RunFolder, list[int]]], out: Path) -> None:
    """The fixed-direction, seq-lora and SD-LoRA rows of the comparison, per run and per experience."""
    write_csv(in_file_units(pd.concat([fixed_direction_runs(f, {m: s}) for m, (f, s) in runs.items()],
                                      ignore_index=True)), out / report.CSV["f1b"])  # acc_pct, aaa_pct, ...
    per_task = [f.gather() for f, _ in runs.values()]
    keep = pd.concat([g[(g["method"] == m) & g["seed"].isin(s)] for g, (m, (_, s)) in zip(per_task, runs.items())])
    write_csv(in_file_units(keep[["method", "seed", "experience", "acc_seen", "stored_params"]]),
              out / "f1b_per_task.csv")


def finding_2(runs: list[tuple[RunFolder, list[int]]], out: Path) -> None:
    """Residuals after every experience and magnitudes, of the comparison's SD-LoRA and the paper-recipe run's.

    The comparison's recipe is named "authors" when its SD-LoRA options are the library defaults (the authors'
    code's), else "comparison".
    """
    res, alphas = [], []
    for (folder, ss), paper in zip(runs, (False, True)):
        options = folder_config(folder).sdlora
        recipe = "paper" if paper else "authors" if options == SDLoRAOptions() else "comparison"
        for seed in ss:
            res += [{"recipe": recipe, "kd_threshold": options.kd_threshold, **r}
                    for r in residual_rows(folder, "sdlora", seed)]
        alphas += [{"recipe": recipe, "alpha_init": options.alpha_init, **r} for r in alpha_rows(folder, "sdlora", ss)]
    write_csv(pd.DataFrame(res), out / report.CSV["f2_residuals"])
    write_csv(pd.DataFrame(alphas), out / report.CSV["f2_alphas"])


def _merge_csv(path: Path, new: pd.DataFrame, key: str) -> None:
    """Write ``new`` into ``path``, replacing only the rows with its ``key`` values (Finding 1(a)'s two task inits
    are separate calls, each with its own runs)."""
    if path.exists():
        old = pd.read_csv(path)
        new = pd.concat([old[~old[key].isin(set(new[key]))], new], ignore_index=True)
    write_csv(new, path)


def cli(argv: list[str] | None = None) -> int:
    return compare.cli(argv, main=main)
