"""The state of an Avalanche ``EvaluationPlugin`` and its metrics as JSON, for checkpoints.

Avalanche 0.6 metrics have no ``state_dict``: forgetting and BWT keep their first and last accuracy per
experience in plain dicts (``Forgetting.initial`` / ``.last``, keyed by experience id), AAA keeps its history
in a list, and the evaluator keeps every emitted value (``all_metric_results``) and the last ones
(``last_metric_results``, what ``strategy.eval`` returns). Without them a resumed run reports other
forgetting, BWT and AAA values than an uninterrupted one. A metric that exposes ``state_dict()`` and
``load_state_dict()`` is saved through them; for every other metric the attributes that hold plain data
(numbers, strings, and lists, tuples and dicts of them, including those of nested metric objects such as
``Forgetting`` and ``Mean``) are saved and set back. Values that are not plain data (tensors, images) are
not saved; their names are recorded under ``"not_saved"``.
"""

from __future__ import annotations

import numbers
import warnings

from avalanche.evaluation.metric_definitions import Metric

_SCALARS = (type(None), bool, int, float, str)


class NotPlain(TypeError):
    """A value that is not numbers, strings, or containers of them."""


def encode(value):
    """JSON form of plain data that keeps int dict keys and tuples (JSON alone would turn them into str and list)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # numpy floats
        return float(value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise NotPlain(type(value).__name__)


def decode(value):
    """Inverse of the JSON encoding of a metric's state."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        return {_hashable(decode(k)): decode(v) for k, v in value["__dict__"]}
    return value


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def has_state_dict(obj) -> bool:
    """Whether ``obj`` keeps its own checkpoint state (``state_dict()`` and ``load_state_dict()``)."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _is_metric(obj) -> bool:
    return Metric in type(obj).__mro__


def snapshot(obj, depth: int = 0) -> dict:
    """Plain-data attributes of ``obj``, recursing into attributes that are Avalanche metrics."""
    out = {}
    for name, value in vars(obj).items():
        if _is_metric(value) and depth < 4:
            out[name] = {"metric": snapshot(value, depth + 1)}
            continue
        try:
            out[name] = {"value": encode(value)}
        except NotPlain:
            pass
    return out


def restore(obj, snap: dict) -> None:
    """Write a saved state back into ``obj``, attribute by attribute."""
    for name, entry in snap.items():
        current = getattr(obj, name, None)
        if "metric" in entry:
            if current is not None:
                restore(current, entry["metric"])
            continue
        value = decode(entry["value"])
        if isinstance(current, dict) and isinstance(value, dict):
            current.clear()  # keeps a defaultdict a defaultdict
            current.update(value)
        else:
            setattr(obj, name, value)


def keyed_by_class(objects) -> list[tuple[str, object]]:
    """``ClassName[i]``: the class name and the index among objects of that class (stable across processes)."""
    seen: dict[str, int] = {}
    out = []
    for obj in objects:
        name = type(obj).__name__
        out.append((f"{name}[{seen.get(name, 0)}]", obj))
        seen[name] = seen.get(name, 0) + 1
    return out


def _plain_entries(results: dict, not_saved: list[str]) -> list:
    out = []
    for name, value in results.items():
        try:
            out.append([name, encode(value)])
        except NotPlain:
            not_saved.append(name)
    return out


def evaluator_state(evaluator) -> dict:
    """JSON-serialisable state of ``evaluator`` (an ``EvaluationPlugin``) and of each of its metrics."""
    not_saved: list[str] = []
    metrics = {}
    for key, m in keyed_by_class(getattr(evaluator, "metrics", [])):
        if has_state_dict(m):
            try:
                metrics[key] = {"state_dict": encode(m.state_dict())}
            except NotPlain as exc:
                raise TypeError(f"metric {key}.state_dict() must return plain data (numbers, strings, lists, dicts) "
                                f"for a checkpoint, got a {exc}") from exc
        else:
            metrics[key] = {"attributes": snapshot(m)}
    return {"metrics": metrics,
            "last": _plain_entries(getattr(evaluator, "last_metric_results", {}), not_saved),
            "all": _plain_entries(getattr(evaluator, "all_metric_results", {}), not_saved),
            "not_saved": sorted(set(not_saved))}


def restore_evaluator_state(evaluator, state: dict) -> None:
    """Set the saved metric state back into an evaluator built like the saved one (same metrics, same order)."""
    saved = dict(state.get("metrics", {}))
    for key, m in keyed_by_class(getattr(evaluator, "metrics", [])):
        entry = saved.pop(key, None)
        if entry is None:
            continue
        if "state_dict" in entry:
            m.load_state_dict(decode(entry["state_dict"]))
        else:
            restore(m, entry["attributes"])
    if saved:
        warnings.warn(f"the checkpoint holds the state of metrics this evaluator does not have: {sorted(saved)}; "
                      "build the evaluator with the same metrics to restore them", RuntimeWarning, stacklevel=3)
    for attr, key in (("last_metric_results", "last"), ("all_metric_results", "all")):
        target = getattr(evaluator, attr, None)
        if isinstance(target, dict) and key in state:
            target.clear()
            target.update({name: decode(v) for name, v in state[key]})
    if state.get("not_saved"):
        warnings.warn(f"these metric values were not plain numbers and were not restored: {state['not_saved']}",
                      RuntimeWarning, stacklevel=3)
