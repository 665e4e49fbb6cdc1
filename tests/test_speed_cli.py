"""benchmarks.speed --quick writes every CSV with the expected measures (no timing assertions)."""

from __future__ import annotations

import pandas as pd
import pytest

from avalanche_sdlora.assets import default_asset
from benchmarks import speed

EXPECTED = {
    "ratios": {"infer_throughput_ratio_sdlora_merged_vs_backbone", "infer_throughput_ratio_l2p_vs_backbone",
               "infer_throughput_ratio_sdlora_merged_vs_l2p", "train_step_time_ratio_20tasks_vs_1task",
               "train_step_time_ratio_50tasks_vs_1task", "train_step_time_ratio_20tasks_vs_plain_lora"},
    "timings": {"infer_images_per_second", "train_step_seconds"},
    "memory": {"train_step_peak_delta"},
    "flops": {"infer_flops_per_image", "train_step_flops_per_image"},
    "params": {"learnable_params", "stored_params_total", "stored_params_added"},
    "end_to_end": {"data_loading_share"},
}
COLUMNS = {"model", "img_size", "measure", "setting", "value", "unit", "device", "threads"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    paths = speed.main(["--quick", "--out", str(out)])
    return out, paths


def test_quick_writes_all_files(quick_run):
    out, paths = quick_run
    for name in EXPECTED:
        assert (out / f"{name}.csv").is_file()
    assert (out / "README.md").is_file() and (out / "train_step_vs_tasks.png").stat().st_size > 0
    assert set(paths) >= set(EXPECTED) | {"readme", "plot"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_csv_measures(quick_run, name):
    out, _ = quick_run
    df = pd.read_csv(out / f"{name}.csv")
    assert COLUMNS <= set(df.columns)
    assert EXPECTED[name] <= set(df["measure"])
    if name == "end_to_end" and default_asset("cifar100.npz") is None:
        return  # data-loading share is a 'skipped' row without the shared data
    rows = df[df["measure"].isin(EXPECTED[name])]
    assert rows["value"].notna().all(), rows


def test_quick_memory_settings_and_params(quick_run):
    out, _ = quick_run
    mem = pd.read_csv(out / "memory.csv")
    assert set(mem.loc[mem["measure"] == "train_step_peak_delta", "tasks"]) == {1, 10, 20, 50}
    par = pd.read_csv(out / "params.csv")
    assert {"sdlora", "sdlora-rr"} <= set(par["method"])
    rr = par[(par["method"] == "sdlora-rr") & (par["measure"] == "rank")].sort_values("task")["value"].tolist()
    assert rr == [10, 10, 10, 8, 8, 8, 8, 6, 6, 6]
    readme = (out / "README.md").read_text()
    assert "| img_size | measure |" in readme and "torch" in readme
