"""RunConfig: one field per setting makes the flags, config.json (round trip, the committed folders) and the identity."""

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
    several = compare.parse_args(["--method-option", "ranpac.M=64", "ranpac.projection_seed=5", "--method-option",
                                  "mos.lr=0.03", "--methods", "ranpac", "mos"]).config
    assert several.options_for("ranpac") == {"M": 64, "projection_seed": 5} and several.options_for("mos") == {"lr": 0.03}


def test_every_committed_config_json_reads_as_a_run_config():
    """Every committed folder is in today's format (python -m benchmarks.migrate results converted the older ones)."""
    configs = sorted((ROOT / "results").rglob("config.json"))
    assert configs
    for path in configs:
        saved = json.loads(path.read_text())
        assert isinstance(saved["protocol"], str) and "sdlora_effective" not in saved, path
        cfg = RunConfig.from_json(saved)  # its fields read back unchanged
        fields = cfg.to_json()
        kept = [k for k in fields if k not in ("sdlora", *INPUT_FIELDS)]  # inputs: by identity
        assert {k: saved[k] for k in kept} == {k: fields[k] for k in kept}, path
        assert fields["sdlora"] == saved["sdlora"], path
        assert cfg.protocol in path.relative_to(ROOT / "results").parts, path  # <protocol>/<run-id> folders
        assert all(fields[k] is None for k in INPUT_FIELDS), path  # no path to find them by
        identity = saved_identity(saved)
        assert identity["protocol"] == cfg.protocol and identity["epochs"] == cfg.epochs, path
        assert {k: identity[k] for k in cfg.sdlora.to_dict() if k in identity} == {
            k: v for k, v in fields["sdlora"].items() if k in identity}, path


def test_a_committed_folder_resumed_today_is_refused_only_for_what_changes():
    # cpu-3seeds ran as "cifar100-cpu" before RunConfig and identities existed (benchmarks.migrate converted it)
    from benchmarks import inputs
    from benchmarks.identity import run_identity

    saved = json.loads((ROOT / "results/cifar100-tiny128/cpu-3seeds/config.json").read_text())
    cfg = RunConfig.from_json(saved).replace(checkpoint=None, device="cpu")
    cfg = cfg.replace(checkpoint=inputs.resolve_checkpoint(cfg.model, None), data=inputs.resolve_data(None))
    current = run_identity(cfg, threads=1)
    old = saved_identity(saved)
    assert old["protocol"] == "cifar100-tiny128" and old["peer_recipe"] == "reference"  # alias; no peers then
    changed, unrecorded = identity_changes(old, current)
    assert {c.split(":")[0] for c in changed} <= {"the torch version"}  # the machine's own facts only
    assert {"--data", "--checkpoint"} <= set(unrecorded)  # never recorded: this call's are recorded, with a note
    changed, _ = identity_changes(old, {**current, "peer_recipe": "shared", "epochs": 4})
    assert any(c.startswith('--peer-recipe: the run\'s "reference", this call\'s "shared"') for c in changed)
    assert any(c.startswith("--epochs: the run's 3, this call's 4") for c in changed)
    # an SD-LoRA option added after the run: it ran as the option's default, so another value is a change
    changed, _ = identity_changes(old, {**current, "variant": "no-magnitudes"})
    assert any(c.startswith('--variant: the run\'s "full"') for c in changed)


def test_a_field_added_since_is_compared_with_what_old_runs_ran():
    from benchmarks import migrate

    # a 0.2.0 folder did not record the settings added since (it ran without them): read as such by the harness
    old = saved_identity({"identity": {"protocol": "cifar100-tiny128", "epochs": 3}})
    assert old["validation_per_class"] is None and old["first_experiences"] is None and old["epochs"] == 3
    # an identity from before RunConfig: converted by benchmarks.migrate, with what the run ran for what it lacks
    old = migrate.old_identity({"identity": {"name": "cifar100-cpu"}})
    assert old["protocol"] == "cifar100-tiny128" and old["rank_schedule"] == [[0, 10], [3, 8], [7, 6]]
    assert old["method_options"] == {} and old["peer_recipe"] == "reference" and old["world_size"] == 1
    assert old["train_amp"] == "float32" and "eval_amp" not in old  # eval_amp: a protocol field it did record


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
