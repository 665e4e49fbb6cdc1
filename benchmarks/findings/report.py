"""Summaries, verdicts and the README of a findings folder, from its CSVs (and ``sources.json``) alone; the plots
are drawn by :mod:`.plots`.

Every number in the README is read from the CSVs by the functions below, and every verdict is one of the rules
stated beside it (:data:`RULES`), so ``python -m benchmarks.findings --report-only`` rebuilds the whole text from the
committed CSVs without a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from avalanche_sdlora.atomic import write_text

from ..reports import markdown_grid, write_csv
from .directions import summarize_alphas, summarize_residuals
from .interpolation import summarize_paths
from .low_loss import summarize_distances
from .plots import plot_f1a, plot_f1b, plot_f2, plot_f3
from .sources import PAPER_OPTIMIZER, PAPER_OPTIONS

CSV = {"f1a": "f1a_distances.csv", "f1b": "f1b_runs.csv", "f2_residuals": "f2_residuals.csv",
       "f2_alphas": "f2_alphas.csv", "f3": "f3_interpolation.csv"}
PAPER_TABLE4_GAP = 77.34 - 74.82  # SD-LoRA minus fixed-direction, ImageNet-R 10 tasks (the larger of the two gaps)
SMALL_RESIDUAL = 0.5  # "small": the earlier directions explain more than half of the new one's squared norm

CLAIMS = {
    "f1a": "LoRAs fine-tuned separately on each task from the pretrained weights lie closer to each other than to "
           "the pretrained weights W0 (a shared low-loss region).",
    "f1b": "Learning task 1's direction, freezing it and training only its magnitude (and the head) on every later "
           "task already does well: better than sequential LoRA and close to SD-LoRA (Table 4 (i): 78.17 / 74.82 vs "
           "SD-LoRA 79.15 / 77.34 Acc, ImageNet-R 5 / 10 tasks).",
    "f2_residuals": "The least-squares residual of each new direction on the earlier ones is small for early tasks "
                    "and grows for later ones.",
    "f2_alphas": "The magnitudes of early tasks rise over later tasks while those of later tasks fall: the model "
                 "leans on its early directions.",
    "f3": "Along the straight line from the model after task 1 to the model after task 2, SD-LoRA keeps task 1 while "
          "reaching task 2 (a low-loss path); sequential LoRA's path loses task 1.",
}
RULES = {
    "f1a": "holds when the mean distance between tasks is below the mean distance to W0",
    "f1b": f"holds when fixed-direction's mean Acc beats seq-lora's and is within {PAPER_TABLE4_GAP:.2f} points (the "
           "paper's larger gap) of SD-LoRA's; partly when only one of the two",
    "f2_residuals": f"holds when the residuals grow with the task (Spearman rho > 0 over the newest directions' "
                    f"means) and the first is small (below {SMALL_RESIDUAL}); partly when only one of the two",
    "f2_alphas": "holds when task 1's magnitude ends above its value after task 1 (rises) and the later half of the "
                 "tasks ends with a lower mean magnitude than the earlier half (later ones fall); partly when only one",
    "f3": "holds when SD-LoRA's largest drop of task-1 accuracy (own classes) along the path is smaller than "
          "seq-lora's",
}


def _read(out: Path, key: str) -> pd.DataFrame | None:
    path = out / CSV[key]
    return pd.read_csv(path) if path.exists() else None


def _pct(v: float) -> str:  # the CSVs hold percent (benchmarks.units)
    return "n/a" if pd.isna(v) else f"{v:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")


def _both(a: bool, b: bool) -> str:
    return "holds" if a and b else "partly" if a or b else "does not hold"


# ------------------------------------------------------------------------------------------- verdicts
def verdict_f1a(s: pd.Series) -> tuple[str, str]:
    measured = (f"task init '{s.task_init}' ({int(s.n_tasks)} tasks x {int(s.n_seeds)} seed(s)): mean distance "
                f"between tasks {s.mean_between_tasks:.4g} (largest {s.max_between_tasks:.4g}) vs mean distance to W0 "
                f"{s.mean_to_pretrained:.4g} (smallest {s.min_to_pretrained:.4g}); "
                f"{100 * s.share_pairs_closer:.0f}% of pairs are closer to each other than the nearer one is to W0"
                + (f"; mean cosine between two tasks' updates {s.mean_cosine:.3f} (above 0.5 is what 'closer to each "
                   "other than to W0' needs at equal norms)" if "mean_cosine" in s and pd.notna(s.mean_cosine) else ""))
    return measured, "holds" if s.mean_between_tasks < s.mean_to_pretrained else "does not hold"


def summarize_f1b(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby("method", sort=False)
    return pd.DataFrame({"acc_mean_pct": g["acc_pct"].mean(), "acc_std_pct": g["acc_pct"].std(),
                         "aaa_mean_pct": g["aaa_pct"].mean(), "aaa_std_pct": g["aaa_pct"].std(),
                         "stored_params": g["stored_params"].max(),
                         "n_seeds": g["seed"].nunique()}).reset_index()


def verdict_f1b(summary: pd.DataFrame) -> tuple[str, str]:
    s = summary.set_index("method")
    fixed, seq, full = (s.loc[m] for m in ("sdlora-fixed-direction", "seq-lora", "sdlora"))
    measured = "; ".join(f"{m} Acc {_pm(r.acc_mean_pct, r.acc_std_pct)}, AAA {_pm(r.aaa_mean_pct, r.aaa_std_pct)}"
                         for m, r in s.iterrows()) + f" ({int(s['n_seeds'].min())} seed(s))"
    gap = full.acc_mean_pct - fixed.acc_mean_pct
    measured += (f"; fixed-direction is {fixed.acc_mean_pct - seq.acc_mean_pct:+.2f} points from seq-lora and "
                 f"{-gap:+.2f} from SD-LoRA")
    return measured, _both(fixed.acc_mean_pct > seq.acc_mean_pct, gap <= PAPER_TABLE4_GAP)


def verdict_f2_residuals(s: pd.Series) -> tuple[str, str]:
    measured = (f"recipe '{s.recipe}' ({int(s.n_seeds)} seed(s)): newest direction's relative residual "
                f"{s['first']:.6f} at task 2, {s['last']:.6f} at the last task (means), range {s['min']:.6f} to "
                f"{s['max']:.6f}, Spearman rho over tasks {s.spearman_rho:+.2f}; {int(s.n_below_kd_threshold)} of "
                f"{int(s.n_decisions)} at or below KD's threshold {s.kd_threshold:g}")
    return measured, _both(bool(s.spearman_rho > 0), bool(s["first"] < SMALL_RESIDUAL))


def verdict_f2_alphas(summary: pd.DataFrame) -> tuple[str, str]:
    g = summary.sort_values("task")
    first = g.iloc[0]
    half = len(g) // 2
    early, late = g.iloc[:len(g) - half]["after_last_task"].mean(), g.iloc[len(g) - half:]["after_last_task"].mean()
    finals = " ".join(f"{a:.3f}" for a in g["after_last_task"])
    measured = (f"recipe '{first.recipe}' ({int(g['n_seeds'].min())} seed(s), alpha_init {first.alpha_init:g}): "
                f"magnitudes after the last task, task 1 to {len(g)}: {finals}; task 1's went from "
                f"{first.after_own_task:.3f} after task 1 to {first.after_last_task:.3f}; mean of the earlier half "
                f"{early:.3f}, of the later half {late:.3f}")
    return measured, _both(bool(first.change_since_own_task > 0), bool(half and late < early))


def verdict_f3(summary: pd.DataFrame) -> tuple[str, str]:
    s = summary.set_index("method")
    parts = [f"{m}: task-1 accuracy (own classes) {_pct(r.task1_acc_start_pct)} at l=0, lowest "
             f"{_pct(r.task1_acc_min_pct)} (largest drop {_pct(r.task1_largest_drop_pts)} points, loss barrier "
             f"{r.task1_loss_barrier:+.3f}), {_pct(r.task1_acc_end_pct)} at l=1; task-2 accuracy "
             f"{_pct(r.task2_acc_start_pct)} -> {_pct(r.task2_acc_end_pct)}"
             f" ({int(r.n_seeds)} seed(s))" for m, r in s.iterrows()]
    if not {"sdlora", "seq-lora"} <= set(s.index):
        return "; ".join(parts), "not computed (needs sdlora and seq-lora)"
    holds = s.loc["sdlora", "task1_largest_drop_pts"] < s.loc["seq-lora", "task1_largest_drop_pts"]
    return "; ".join(parts), "holds" if holds else "does not hold"


# ------------------------------------------------------------------------------------------- README
def source_key(name: str, findings: list[str]) -> str:
    """The sources.json key of the runs named ``name`` that ``findings`` read, e.g. "comparison (f2, f3)"."""
    return f"{name} ({', '.join(findings)})"


def source_name(key: str) -> str:
    """The name in a :func:`source_key` (a key written before findings were named in it is the name itself)."""
    return key.split(" (")[0]


def _sources_text(sources: dict) -> str:
    lines = []
    for key, s in sources.items():
        if not isinstance(s, dict) or "folders" not in s:
            continue
        seeds = s.get("seeds")
        folders = s["folders"] if len(s["folders"]) < 3 else [s["folders"][0], "...", s["folders"][-1]]
        lines.append(f"* **{key}**: {', '.join(f'`{f}`' for f in folders)}; methods {', '.join(s['methods'])}; "
                     f"seeds {seeds}; {'trained by this command' if s.get('trained_here') else 'given'}; "
                     f"training {s['train_seconds']:.0f} s, evaluation {s['eval_seconds']:.0f} s (sums over its "
                     f"parts, {s['threads']} thread(s))")
        if s.get("folder_of"):
            lines.append("  read from: " + "; ".join(f"{m} `{f}`" for m, f in s["folder_of"].items()))
        if "sdlora" in s:
            given = [s["sdlora"], *(s.get("recipes") or {}).values()]
            options = json.dumps(s["sdlora"]) if s["sdlora"] is not None else "not recorded"
            recipes = ", ".join(f"{m}: {json.dumps(r) if r is not None else 'not recorded'}"
                                for m, r in (s.get("recipes") or {}).items())
            why = " (not recorded: written before compare recorded them)" if None in given else ""
            lines.append(f"  SD-LoRA options: {options}; recipes: {recipes or 'none'}{why}")
        trained = (s.get("recipes") or {}).get("sdlora") or {}
        options = s.get("sdlora") or {}
        other = {k: options.get(k) for k, v in PAPER_OPTIONS.items() if options.get(k) != v}
        if source_name(key) == "paper" and other:
            lines.append(f"  Note: this run's SD-LoRA options differ from the paper's {json.dumps(PAPER_OPTIONS)} in "
                         f"{json.dumps(other)}")
        if source_name(key) == "paper" and (trained.get("optimizer"), trained.get("lr")) != PAPER_OPTIMIZER:
            lines.append(f"  Note: the paper trains with {PAPER_OPTIMIZER[0]} at lr {PAPER_OPTIMIZER[1]:g}; this run "
                         f"trained with {trained.get('optimizer')} at lr {trained.get('lr')} (run it with --preset paper: "
                         "see findings.sources.paper_recipe)")
    for finding, secs in sources.get("analysis_seconds", {}).items():
        lines.append(f"* analysis of {finding} ({ANALYSIS[finding]}): {secs:.0f} s")
    return "\n".join(lines)


ANALYSIS = {"f1a": "loading every single-task checkpoint, the distances",
            "f2": "loading every checkpoint of the SD-LoRA runs, the least-squares fits",
            "f3": "evaluating the path's points on the first two test experiences"}


def write(out: Path) -> pd.DataFrame:
    """Summaries, verdicts.csv, the plots and README.md of ``out`` from the CSVs there; returns the verdicts."""
    out = Path(out)
    sources = json.loads((out / "sources.json").read_text()) if (out / "sources.json").exists() else {}
    verdicts: list[dict] = []

    def add(finding: str, case: str, measured: str, verdict: str) -> None:
        verdicts.append({"finding": finding, "case": case, "paper": CLAIMS[finding], "rule": RULES[finding],
                         "measured": measured, "verdict": verdict})

    f1a = _read(out, "f1a")
    if f1a is not None:
        summary = summarize_distances(f1a)
        write_csv(summary, out / "f1a_summary.csv")
        for _, s in summary.iterrows():
            add("f1a", f"task init {s.task_init}", *verdict_f1a(s))
        plot_f1a(f1a, out / "f1a_distances.png")
    f1b = _read(out, "f1b")
    if f1b is not None:
        summary = summarize_f1b(f1b)
        write_csv(summary, out / "f1b_summary.csv")
        add("f1b", "", *verdict_f1b(summary))
        if (out / "f1b_per_task.csv").exists():
            plot_f1b(pd.read_csv(out / "f1b_per_task.csv"), out / "f1b_accuracy.png")
    res, alphas = _read(out, "f2_residuals"), _read(out, "f2_alphas")
    if res is not None:
        summary = summarize_residuals(res)
        write_csv(summary, out / "f2_residuals_summary.csv")
        for _, s in summary.iterrows():
            add("f2_residuals", f"recipe {s.recipe}", *verdict_f2_residuals(s))
    if alphas is not None:
        summary = summarize_alphas(alphas)
        write_csv(summary, out / "f2_alphas_summary.csv")
        for recipe, g in summary.groupby("recipe", sort=False):
            add("f2_alphas", f"recipe {recipe}", *verdict_f2_alphas(g))
    if res is not None or alphas is not None:
        plot_f2(res, alphas, out / "f2_directions_magnitudes.png")
    f3 = _read(out, "f3")
    if f3 is not None:
        summary = summarize_paths(f3)
        write_csv(summary, out / "f3_summary.csv")
        add("f3", "", *verdict_f3(summary))
        plot_f3(f3, out / "f3_interpolation.png")
    table = pd.DataFrame(verdicts, columns=["finding", "case", "paper", "rule", "measured", "verdict"])
    write_csv(table, out / "verdicts.csv")
    write_text(out / "README.md", readme(table, sources, out))
    return table


TITLES = {"f1a": "Finding 1(a): single-task LoRAs and the pretrained weights",
          "f1b": "Finding 1(b): one fixed direction, only its magnitude trained",
          "f2_residuals": "Finding 2(a): residuals of new directions on the earlier ones",
          "f2_alphas": "Finding 2(b): magnitude trajectories",
          "f3": "Finding 3: the straight path from the task-1 model to the task-2 model"}
FILES = {"f1a": ["f1a_distances.csv", "f1a_summary.csv", "f1a_distances.png"],
         "f1b": ["f1b_runs.csv", "f1b_per_task.csv", "f1b_summary.csv", "f1b_accuracy.png"],
         "f2_residuals": ["f2_residuals.csv", "f2_residuals_summary.csv", "f2_directions_magnitudes.png"],
         "f2_alphas": ["f2_alphas.csv", "f2_alphas_summary.csv", "f2_directions_magnitudes.png"],
         "f3": ["f3_interpolation.csv", "f3_summary.csv", "f3_interpolation.png"]}
NOTES = {
    "f1a": "Each task's LoRA is `seq-lora` (one rank-r pair on q and v, magnitude 1, the protocol's SGD recipe) "
           "trained by `benchmarks.runner.run` on that experience alone from W0; its update dW_t is read from its "
           "checkpoint. Distances are Frobenius norms over all adapted weights together (q and v of every block). "
           "With task init 'same' every task's LoRA starts from the same random A (its seed is the run's), with "
           "'distinct' each from its own: B starts at 0, so updates grown from one A share its row space, which "
           "brings them closer; the two inits answer different questions (`--task-init`).",
    "f1b": "Rows of the comparison run (`sdlora-fixed-direction`, `seq-lora`, `sdlora`); Acc is the seen-class "
           "accuracy after the last task, AAA its average over tasks.",
    "f2_residuals": "The residual is SD-LoRA-KD's statistic (`plugins/distillation.direction_residuals`), computed on "
                    "the checkpoint after every task; 'newest' is the direction of the task just trained.",
    "f2_alphas": "Magnitudes are per_task.csv's `alphas` after every task. Under the authors' code every old "
                 "magnitude is reset to alpha_init when a task starts (reset_alphas), so a trajectory there shows "
                 "one task's learning at a time; the paper's recipe keeps them.",
    "f3": "Interpolated: the dense updates of the adapted weights and task 1's head rows (equal in both models: "
          "frozen after task 1); task 2's rows exist only in the task-2 model and are its at every l. 'own' scores a "
          "test set on its own task's classes only (for task 1 at l=0: exactly the task-1 model as recorded), "
          "'seen' on both tasks' classes (at l=1: exactly the task-2 model as recorded after task 2).",
}


def readme(verdicts: pd.DataFrame, sources: dict, out: Path) -> str:
    """The findings README: for each finding the paper's claim, what we measured, the rule and the verdict."""
    parts = ["# The paper's findings, measured\n",
             "Generated by `python -m benchmarks.findings` from the CSVs in this folder (`--report-only` rebuilds it "
             "from them alone); do not edit. Numbers are computed from the CSVs; each verdict applies the rule "
             "stated with it.\n"]
    calls = sources.get("calls", [])
    if len(calls) == 1:
        parts.append(f"Command: `{calls[0]['command']}`\n")
    elif calls:
        parts.append("Commands, oldest first (each computed the findings it names; the CSVs hold the last "
                     "computation of each):\n\n" + "\n".join(f"    {c['command']}" for c in calls) + "\n")
    if sources.get("settings"):
        parts.append("Settings: " + ", ".join(f"{k} {v}" for k, v in sources["settings"].items()) + "\n")
    text = _sources_text(sources)
    if text:
        parts.append("## Runs read and their cost\n\n" + text + "\n")
    rows = [[TITLES[r.finding].split(":")[0], r.case or "-", r.verdict] for r in verdicts.itertuples()]
    if rows:
        parts.append("## Verdicts\n\n" + markdown_grid(["finding", "case", "verdict"], rows))
    for key, title in TITLES.items():
        g = verdicts[verdicts["finding"] == key]
        parts.append(f"## {title}\n")
        parts.append(f"**Paper.** {CLAIMS[key]}\n")
        if g.empty:
            parts.append("**Measured.** Not computed in this folder (see `--only`).\n")
            continue
        for r in g.itertuples():
            parts.append(f"**Measured.** {r.measured}.\n\n**Verdict: {r.verdict}** ({r.rule}).\n")
        parts.append(f"{NOTES[key]}\n")
        present = [f"`{f}`" for f in FILES[key] if (out / f).exists()]
        parts.append(f"Files: {', '.join(present)}\n")
    return "\n".join(parts)
