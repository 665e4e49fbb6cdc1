"""DualPrompt's prompt selection: the fraction of test images whose key matching picks their own task's E-prompt,
counted during Avalanche's evaluation, checked against a recount by hand (issue 30 reports it beside the accuracy)."""

import math

import torch
from avalanche.training.templates import SupervisedTemplate

from benchmarks.methods import get_method
from benchmarks.peers import dualprompt
from conftest import TINY_IMG, make_evaluator


def _strategy(**options) -> SupervisedTemplate:
    torch.manual_seed(0)
    return dualprompt.build_strategy(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG,
                                     num_classes=4, n_experiences=2, epochs=1, batch_size=8, eval_batch_size=5,
                                     device="cpu", evaluator=make_evaluator(), plugins=[], **options)


@torch.no_grad()
def _by_hand(model, experiences) -> float:
    hits = images = 0
    model.eval()
    for exp in experiences:
        if exp.current_experience > int(model.task):
            continue
        x = torch.stack([exp.dataset.eval()[i][0] for i in range(len(exp.dataset))])
        picked = model.select(model.vit.query(x))
        hits += int((picked == exp.current_experience).sum())
        images += len(picked)
    return hits / images


def test_the_fraction_counts_own_task_prompts_over_learned_tasks_only(tiny_bench):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = _strategy()
        selection = next(p for p in s.plugins if isinstance(p, dualprompt.PromptSelection))
        assert math.isnan(get_method("dualprompt").extra_columns(s, 0)["own_prompt_fraction"])  # nothing evaluated
        s.train(tiny_bench.train_stream[0])
        s.eval(tiny_bench.test_stream)  # experience 1's images have no learned prompt yet: left out
        assert selection.images == len(tiny_bench.test_stream[0].dataset)
        assert selection.fraction == _by_hand(s.model, tiny_bench.test_stream)  # over the pool: any key may win
        s.train(tiny_bench.train_stream[1])
        s.eval(tiny_bench.test_stream)
        expected = _by_hand(s.model, tiny_bench.test_stream)
        assert selection.images == sum(len(e.dataset) for e in tiny_bench.test_stream)
        assert selection.fraction == expected
        assert get_method("dualprompt").extra_columns(s, 1) == {"own_prompt_fraction": expected}
    finally:
        torch.set_num_threads(threads)


def test_matching_among_seen_keys_after_one_task_always_picks_its_prompt(tiny_bench):
    """``key_match='seen'`` after one task leaves one key to match: every image gets task 0's prompt (1.0)."""
    s = _strategy(key_match="seen")
    s.train(tiny_bench.train_stream[0])
    s.eval(tiny_bench.test_stream[:1])
    assert next(p for p in s.plugins if isinstance(p, dualprompt.PromptSelection)).fraction == 1.0
