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

_FILES = ("data", "checkpoint")
_SDLORA_FIELDS = tuple(f.name for f in dataclasses.fields(SDLoRAOptions))
# issue 20: the launch
_LAUNCH = {"world_size": "the number of processes (torchrun --nproc_per_node; 1 without torchrun)",
           "backend": "the torch.distributed backend"}


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


def added_since_0_2() -> dict[str, Any]:
    """Identity settings added since 0.2.0, with what a 0.2.0 run folder (which did not record them) ran with."""
    return {f.name: f.metadata["legacy"] for f in dataclasses.fields(RunConfig)
            if f.metadata["identity"] and f.metadata["legacy"] is not dataclasses.MISSING}


def saved_identity(saved: dict) -> dict:
    """The identity a run folder recorded (a 0.2.0 folder: with the settings added since as it ran them).

    Folders of older formats are converted once by ``python -m benchmarks.migrate`` (:mod:`benchmarks.migrate`);
    :func:`benchmarks.folder_checks.read_config` refuses them, naming that command.
    """
    return {**added_since_0_2(), **saved["identity"]}


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
