"""The frozen-backbone feature cache of SimpleCIL/APER/RanPAC: a reuse only where it is exact, and a run's numbers
bit-identical with and without it (evaluation in float32 and under the protocols' bfloat16 autocast)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from benchmarks.peers import aper, ranpac
from benchmarks.peers.feature_cache import FrozenFeatureCache

from conftest import TINY_IMG, make_evaluator


def counted(module: nn.Module):
    calls = []

    def fn(x):
        calls.append(1)
        return module(x)

    return fn, calls


def test_a_minibatch_is_computed_once_while_the_module_is_unchanged():
    torch.manual_seed(0)
    m = nn.Linear(6, 3).eval()
    fn, calls = counted(m)
    cache = FrozenFeatureCache()
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        first = cache(fn, x, m)
        again = cache(fn, x.clone(), m)  # same content, another tensor: a hit
        assert torch.equal(again, first) and cache(fn, x, m) is again
        assert len(calls) == 1 and cache.hits == 2
        assert torch.equal(cache(fn, y, m), m(y))  # other content: computed
        assert len(calls) == 2
        assert torch.equal(cache(fn, x[:3], m), m(x[:3])) and len(calls) == 3  # other shape: computed


@pytest.mark.parametrize("change", ["in-place step", "load_state_dict", "replaced tensor", "buffer"])
def test_any_change_of_the_module_drops_what_was_stored(change):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)).eval()
    fn, calls = counted(m)
    cache = FrozenFeatureCache()
    x = torch.randn(4, 6)
    with torch.no_grad():
        cache(fn, x, m)
        if change == "in-place step":
            m[0].weight.add_(1.0)
        elif change == "load_state_dict":
            m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()})
        elif change == "replaced tensor":
            m[0].weight = nn.Parameter(m[0].weight + 1)
        else:
            m[1].running_mean.add_(1.0)
        out = cache(fn, x, m)
        assert len(calls) == 2
        assert torch.equal(out, m(x))


def test_training_mode_gradients_and_autocast_are_never_served_from_the_cache():
    torch.manual_seed(0)
    m = nn.Linear(6, 3).eval()
    fn, calls = counted(m)
    cache = FrozenFeatureCache()
    x = torch.randn(4, 6)
    cache(fn, x, m)  # gradients on: computed, not stored
    assert len(cache) == 0
    with torch.no_grad():
        m.train()
        cache(fn, x, m)
        m.eval()
        assert len(cache) == 0
        plain = cache(fn, x, m)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cache(fn, x, m)
        assert low.dtype == torch.bfloat16 and plain.dtype == torch.float32  # its own entry, not the float32 one
    assert len(calls) == 4 and len(cache) == 2


def test_a_stored_output_does_not_keep_the_tensor_it_was_sliced_from():
    tokens = torch.randn(4, 65, 8)
    cache = FrozenFeatureCache()
    m = nn.Identity().eval()
    with torch.no_grad():
        cache(lambda x: tokens[:, 0], torch.randn(4, 8), m)  # what a cls-token pooling returns: a view
    (stored,) = cache._store.values()
    assert stored._base is None and stored.untyped_storage().nbytes() == 4 * 8 * 4


def test_nothing_past_the_size_limit_is_stored():
    m = nn.Linear(6, 3).eval()
    fn, calls = counted(m)
    cache = FrozenFeatureCache(max_elements=12)
    with torch.no_grad():
        for x in (torch.randn(4, 6), torch.randn(4, 6)):
            cache(fn, x, m)
    assert len(cache) == 1 and cache.elements == 12
    with pytest.raises(ValueError, match="max_elements"):
        FrozenFeatureCache(max_elements=-1)


BUILDERS = {"simplecil": (aper.build_simplecil_strategy, {}), "aper": (aper.build_strategy, {}),
            "ranpac": (ranpac.build_strategy, {"M": 64})}


def build(method: str, cached: bool):
    torch.manual_seed(0)
    builder, options = BUILDERS[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone"
        strategy = builder(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG, num_classes=4,
                           n_experiences=2, epochs=1, batch_size=8, eval_batch_size=4, device="cpu",
                           evaluator=make_evaluator(), plugins=[], **options)
    if not cached:
        strategy.model.feature_cache = None
    return strategy


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_a_run_with_the_cache_gives_the_same_numbers_as_one_without(method, amp, tiny_bench, one_thread):
    results = {}
    for cached in (True, False):
        torch.manual_seed(0)
        s = build(method, cached)
        out = []
        for i, exp in enumerate(tiny_bench.train_stream):
            s.train(exp)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out.append(s.eval(tiny_bench.test_stream[: i + 1]))
        results[cached] = (out, s.model.feature_cache)
    (with_cache, cache), (without, _) = results[True], results[False]
    assert with_cache == without
    # test experience 0 was evaluated after both experiences: its minibatches the second time came from the cache
    assert cache.hits == 2 and cache.misses == 4  # 4 test images per class, 2 classes, batch 4: 2 minibatches each
