"""Every strategy we ship takes keywords only, so Avalanche 0.6 never warns a user that it "still has positional
arguments" (its check runs on each strategy's construction, ``templates/base.py``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

import pytest
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import _warn_init_has_positional_args

import avalanche_sdlora
import benchmarks.peers


def _strategy_classes() -> list[type]:
    modules = [importlib.import_module("avalanche_sdlora.strategy")]
    modules += [importlib.import_module(f"benchmarks.peers.{m.name}") for m in pkgutil.iter_modules(benchmarks.peers.__path__)]
    found: dict[str, type] = {}
    for module in modules:
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, SupervisedTemplate) and cls.__module__.startswith(
                    ("avalanche_sdlora", "benchmarks")):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def test_the_search_finds_the_strategies() -> None:
    names = {c.__name__ for c in _strategy_classes()}
    assert {"SDLoRA", "SDLoRARR", "SDLoRAKD", "RanPAC", "ClassIncrementalTemplate"} <= names
    assert avalanche_sdlora.SDLoRA in _strategy_classes()


@pytest.mark.parametrize("cls", _strategy_classes(), ids=lambda c: c.__name__)
def test_constructor_takes_keywords_only(cls: type) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_init_has_positional_args(cls.__init__, cls.__name__)
