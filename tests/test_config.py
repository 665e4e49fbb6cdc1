"""RunConfig: one field per setting makes the flags, config.json (round trip, old files too) and the identity."""

import dataclasses
import json
from pathlib import Path

import pytest

from avalanche_sdlora import SDLoRAOptions
from benchmarks import compare
from benchmarks.config import INPUT_FIELDS, RunConfig, config_from_flags, flag_of, run_flags
from benchmarks.identity import identity_changes, labels, saved_identity
from benchmarks.protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parent.parent


def test_json_round_trip_of_every_field():
    cfg = RunConfig.for_protocol("cifar100-tiny224", epochs=2, classes=6, peer_recipe="shared", workers=1,
                                 sdlora=SDLoRAOptions(direction_norm="frobenius", rank_schedule={0: 4, 2: 2}),
                                 method_options=(("ranpac", "M", 64), ("dualprompt", "e_layers", (2, 3))))
    again = RunConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg and again.options_for("dualprompt") == {"e_layers": [2, 3]}


def test_every_field_and_sdlora_option_has_one_flag_with_its_help():
    flags = {f.dest: f.flag for f in run_flags()}
    fields = [f for f in dataclasses.fields(RunConfig) if f.metadata["flag"] is not None]
    assert {f.name for f in fields} | {f.name for f in dataclasses.fields(SDLoRAOptions)} == set(flags)
    assert flags["method_options"] == "--method-option" and flags["batch_size"] == "--batch-size"
    with pytest.raises(SystemExit) as done:
        compare.parse_args(["--help"])  # every help string formats
    assert done.value.code == 0


def test_flags_override_the_protocol_and_sdlora_errors_name_the_flag():
    args = compare.parse_args(["--protocol", "cifar100-cpu", "--epochs", "5", "--reset-alphas", "false",
                               "--rank-schedule", "0:6,2:4", "--method-option", "ranpac.M=128"])
    cfg = args.config
    assert cfg.protocol == "cifar100-tiny128" and cfg.epochs == 5 and cfg.img_size == 128  # the alias's preset
    assert cfg.sdlora.reset_alphas is False and cfg.sdlora.schedule == {0: 6, 2: 4}
    assert cfg.options_for("ranpac") == {"M": 128}
    with pytest.raises(SystemExit, match=r"^error: --alpha-lr must be a positive number or None"):
        compare.parse_args(["--alpha-lr", "-1"])
    with pytest.raises(SystemExit, match=r"--method-option ranpac\.N=1: ranpac has no option 'N'"):
        compare.parse_args(["--method-option", "ranpac.N=1"])
    with pytest.raises(SystemExit, match="expected METHOD.NAME=VALUE"):
        compare.parse_args(["--method-option", "ranpac=1"])


def test_every_committed_config_json_reads_as_a_run_config():
    configs = sorted((ROOT / "results").rglob("config.json"))
    assert configs
    for path in configs:
        saved = json.loads(path.read_text())
        cfg = RunConfig.from_json(saved)
        proto = saved["protocol"]
        if isinstance(proto, str):  # written by RunConfig: its fields read back unchanged
            fields = cfg.to_json()  # fields added since (e.g. an SD-LoRA option) take their defaults
            kept = [k for k in fields if k in saved and k not in ("sdlora", *INPUT_FIELDS)]  # inputs: by identity
            assert {k: saved[k] for k in kept} == {k: fields[k] for k in kept}, path
            assert {k: v for k, v in fields["sdlora"].items() if k in saved["sdlora"]} == saved["sdlora"], path
            assert cfg.protocol in path.relative_to(ROOT / "results").parts, path  # <protocol>/<run-id> folders
            assert all(cfg.to_json()[k] is None for k in INPUT_FIELDS), path  # no path to find them by
            continue
        # written before RunConfig: a dict, under the protocol's former name
        assert proto["name"] == "cifar100-cpu" and cfg.protocol == "cifar100-tiny128", path
        assert (cfg.epochs, cfg.lr, cfg.train_per_class) == (proto["epochs"], proto["lr"], proto["train_per_class"])
        assert cfg.sdlora.direction_norm == saved.get("sdlora_effective", saved["sdlora_options"]).get(
            "direction_norm", SDLoRAOptions().direction_norm)


def test_a_committed_folder_resumed_today_is_refused_only_for_what_changes():
    # cpu-3seeds ran as "cifar100-cpu" before RunConfig and identities existed; its settings under today's names
    from benchmarks import inputs
    from benchmarks.identity import run_identity

    saved = json.loads((ROOT / "results/cifar100-tiny128/cpu-3seeds/config.json").read_text())
    cfg = RunConfig.from_json(saved).replace(checkpoint=None, device="cpu")
    cfg = cfg.replace(checkpoint=inputs.resolve_checkpoint(cfg.model, None), data=inputs.resolve_data(None))
    current = run_identity(cfg, threads=1)
    old = saved_identity(saved, current)
    assert old["protocol"] == "cifar100-tiny128" and old["peer_recipe"] == "reference"  # alias; no peers then
    changed, unrecorded = identity_changes(old, current)
    assert {c.split(":")[0] for c in changed} <= {"the torch version"}  # the machine's own facts only
    assert {"--data", "--checkpoint"} <= set(unrecorded)
    changed, _ = identity_changes(old, {**current, "peer_recipe": "shared", "epochs": 4})
    assert any(c.startswith('--peer-recipe: the run\'s "reference", this call\'s "shared"') for c in changed)
    assert any(c.startswith("--epochs: the run's 3, this call's 4") for c in changed)


def test_a_field_added_since_is_compared_with_what_old_runs_ran():
    current = {k: None for k in labels()}
    old = saved_identity({"identity": {"name": "cifar100-cpu"}}, current)  # an identity from before RunConfig
    assert old["protocol"] == "cifar100-tiny128" and old["rank_schedule"] == [[0, 10], [3, 8], [7, 6]]
    assert old["method_options"] == {} and old["peer_recipe"] == "reference"


def test_identity_labels_name_flags():
    names = labels()
    for f in dataclasses.fields(RunConfig):
        if f.metadata["identity"] and f.name != "sdlora" and f.metadata["flag"] is not None:
            assert names[f.name].startswith(flag_of(f)), f.name
    assert names["direction_norm"] == "--direction-norm" and names["torch"] == "the torch version"


def test_protocol_presets_are_what_the_flag_gives():
    for name in PROTOCOLS:
        cfg = RunConfig.for_protocol(name)
        assert cfg.protocol == name and config_from_flags(compare.parse_args(["--protocol", name])) == cfg
