"""A run's identity: every setting that can change a number, and the refusal of a resume that changes one, by name.

A (method, seed) continued under other settings, or a table row averaging seeds run under two, is no result, so
``--resume`` compares this call's identity with the one the run folder recorded and names each difference with its
flag. The identity is the identity fields of :class:`~benchmarks.config.RunConfig` (SD-LoRA's options flat), the
input files by content (a data folder by its file list, :func:`benchmarks.inputs.tree_identity`), the machine, the
torch threads per (method, seed) (threads change the order of float sums), the torch version and the launch: the
number of processes and the torch.distributed backend (under torchrun the gradient is a mean of per-rank means and
each rank draws its own flips, so another world size is another run).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from avalanche_sdlora.options import SDLoRAOptions

from . import distributed
from .config import RunConfig, flag_of
from .inputs import data_identity, file_identity, same_file_content
from .machine import device_name
from .protocols import PROTOCOL_FIELDS, canonical

_FILES = ("data", "checkpoint")
_SDLORA_FIELDS = tuple(f.name for f in dataclasses.fields(SDLoRAOptions))
# issue 20: the launch, and what every run folder from before it was recorded ran with (one process, no backend)
_LAUNCH = {"world_size": "the number of processes (torchrun --nproc_per_node; 1 without torchrun)",
           "backend": "the torch.distributed backend"}
_LAUNCH_LEGACY = {"world_size": 1, "backend": None}


def labels() -> dict[str, str]:
    """How each identity key is named in a refusal: its flag, or what sets it when no flag does."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(RunConfig):
        if not f.metadata["identity"]:
            continue
        if f.name == "sdlora":
            out.update({n: "--" + n.replace("_", "-") for n in _SDLORA_FIELDS})
        else:
            out[f.name] = f.metadata["label"] or flag_of(f)
    return {**out, "device_name": "the machine", "torch": "the torch version", **_LAUNCH}


def run_identity(cfg: RunConfig, threads: int) -> dict[str, Any]:
    """This call's value of every identity setting; ``threads``: the torch threads each (method, seed) runs on."""
    as_json = cfg.to_json()
    identity: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if not f.metadata["identity"]:
            continue
        if f.name == "sdlora":
            identity.update(as_json["sdlora"])
        elif f.name == "data":
            identity[f.name] = data_identity(cfg)
        elif f.name in _FILES:
            identity[f.name] = file_identity(getattr(cfg, f.name))
        elif f.name == "threads":
            identity[f.name] = threads
        else:
            identity[f.name] = as_json[f.name]
    identity.update(device_name=device_name(cfg.device), torch=torch.__version__)
    identity.update(world_size=distributed.world_size(), backend=distributed.backend(cfg))
    assert set(identity) == set(labels()), set(identity) ^ set(labels())
    return identity


# Protocol fields that were run fields before (issue 30: a protocol sets its training precision): a folder that did
# not record one ran with its legacy value, as for any run field.
FORMER_RUN_FIELDS = ("train_amp",)


def added_since_0_2() -> dict[str, Any]:
    """Identity settings added since 0.2.0, with what a 0.2.0 run folder (which did not record them) ran with."""
    return {f.name: f.metadata["legacy"] for f in dataclasses.fields(RunConfig)
            if f.metadata["identity"] and f.metadata["legacy"] is not dataclasses.MISSING and
            f.name in ("validation_per_class", "first_experiences")}


def _legacy() -> dict[str, Any]:
    """What a run folder that did not record a setting ran with: SD-LoRA options and fields added since."""
    out = dict(SDLoRAOptions().to_dict())
    for f in dataclasses.fields(RunConfig):
        if f.metadata["legacy"] is not dataclasses.MISSING and (f.name not in PROTOCOL_FIELDS or
                                                               f.name in FORMER_RUN_FIELDS):
            out[f.name] = f.metadata["legacy"]
    return out


def saved_identity(saved: dict, current: dict) -> dict:
    """The identity a run folder recorded; for folders written before ``identity`` existed, what they did record."""
    if "identity" in saved:
        old = dict(saved["identity"])
        if "name" in old:  # the protocol's name, before RunConfig
            old["protocol"] = old.pop("name")
        for key, value in _legacy().items():
            old.setdefault(key, value)
    elif not isinstance(saved.get("protocol"), dict):  # a RunConfig without its identity (edited by hand)
        as_json = RunConfig.from_json(saved).to_json()
        old = {k: v for k, v in {**as_json, **as_json["sdlora"]}.items() if k in current and k not in _FILES}
        old.pop("threads", None)  # the flag's value, not the threads each (method, seed) ran on
        old.update({k: saved[k] for k in ("device_name", "torch") if k in saved})
    else:
        # A protocol field added since is not unknown: the run ran without it, so it is refused as a change.
        proto = saved["protocol"]
        legacy = {f.name: f.metadata["legacy"] for f in dataclasses.fields(RunConfig)
                  if f.name in PROTOCOL_FIELDS and f.metadata["legacy"] is not dataclasses.MISSING}
        old = {k: proto.get(k, legacy.get(k, "not recorded")) for k in PROTOCOL_FIELDS}
        old["protocol"] = proto["name"]
        for k in ("classes", "test_per_class", "rank", "ewc_lambda", "device", "device_name", "torch"):
            if k in saved:
                old[k] = saved[k]
        # Options recorded with their defaults ("sdlora_effective"), or only those given (older runs), which ran with
        # the behaviour today's defaults keep; an option added later (e.g. head_init) ran as its default.
        old.update({n: current[n] for n in _SDLORA_FIELDS if n != "rank"})
        old.update(saved.get("sdlora_effective", saved.get("sdlora_options", {})))
        old["workers"] = saved.get("workers", 0)  # before --workers existed, data loading ran in the training process
        if saved.get("threads") == 1:  # the parent's thread count: the runs' only when it was 1 (a worker always has 1)
            old["threads"] = 1
        old.update({k: v for k, v in _legacy().items() if k not in _SDLORA_FIELDS})
    if "protocol" in old:
        old["protocol"] = canonical(old["protocol"])
    for key, value in _LAUNCH_LEGACY.items():
        old.setdefault(key, value)
    return old


def _show(key: str, value: Any) -> str:
    if key in _FILES and isinstance(value, dict) and "files_sha256" in value:
        return f"'{value.get('name')}' ({value.get('files')} files, list sha256 {str(value['files_sha256'])[:12]}...)"
    if key in _FILES and isinstance(value, dict):
        return f"'{value.get('name')}' (sha256 {str(value.get('sha256'))[:12]}...)"
    return json.dumps(value)


def identity_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """Settings this call changes (as 'flag: run's value, this call's value') and those the folder never recorded."""
    names = labels()
    changed, unrecorded = [], []
    for key, value in current.items():
        if key not in saved:
            unrecorded.append(names[key].split(" (")[0])
            continue
        same = (same_file_content(saved[key], value) if key in _FILES and isinstance(saved[key], dict)
                else saved[key] == value)
        if not same:
            changed.append(f"{names[key]}: the run's {_show(key, saved[key])}, this call's {_show(key, value)}")
    return changed, unrecorded
