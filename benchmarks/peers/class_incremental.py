"""The part of Avalanche's ``SupervisedTemplate`` that every trained peer here (InfLoRA, the prompt methods, the
first-session methods) changes the same way: class-incremental input only, an optimizer that steps exactly the
tensors that train now, and the logits of the current experience's classes alone for the references' training loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader, collate_from_data_or_kwargs
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor


class ClassIncrementalTemplate(SupervisedTemplate):
    """``SupervisedTemplate`` that refuses an experience repeating earlier classes and rebuilds its optimizer.

    Each peer grows or freezes its own tensors per experience (new LoRA pairs, prompt rows, head rows) and assumes
    every experience brings new classes; a benchmark that repeats classes would silently train a wrong model, so it
    is refused before anything changes. ``_seen_classes`` is the name :mod:`avalanche_sdlora.checkpoint` saves and
    restores on resume.
    """

    method_label = "this method"  # how the refusal names the strategy

    def __init__(self, **kwargs) -> None:  # keywords only, as Avalanche 0.6 asks of strategies (else it warns)
        self._seen_classes: set[int] = set()
        super().__init__(**kwargs)

    def _before_training_exp(self, **kwargs) -> None:
        exp = self.experience
        shared = sorted({int(c) for c in exp.classes_in_this_experience} & self._seen_classes)
        if shared:
            raise ValueError(f"experience {exp.current_experience} shares classes {shared[:10]} with earlier experiences; "
                             f"{self.method_label} is class-incremental: build the benchmark with disjoint classes "
                             "per experience (class_incremental_benchmark or nc_benchmark)")
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        self._seen_classes |= {int(c) for c in self.experience.classes_in_this_experience}
        super()._after_training_exp(**kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = True, **kwargs) -> None:
        """Point the optimizer at exactly the trainable parameters, in one group, with fresh state.

        Avalanche's ``update_optimizer`` keeps the old groups and their state and places a parameter it has not
        seen by its module neighbours; here the trainable set changes at every experience (new LoRA pairs, prompt
        or head rows) and the references start each task's optimizer afresh, so the group is rebuilt instead.
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.state = defaultdict(dict)
        self.optimizer.param_groups.clear()
        if params:
            self.optimizer.add_param_group({"params": params})
        self.optimized_param_id = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # Checkpoints (benchmarks.peer_checkpoint): by default the model's state dict is the whole trained state and its
    # structure never changes; a peer that grows modules per task or keeps tensors outside the model overrides these.
    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The tensors a resumed run needs: here the model's state dict."""
        return dict(self.model.state_dict())

    def checkpoint_structure(self) -> dict:
        """JSON that rebuilds what the tensors fill; here nothing grows."""
        return {}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Load ``tensors`` strictly into the freshly built model."""
        self.model.load_state_dict(tensors, strict=True)

    def current_class_logits(self, logits: Tensor) -> Tensor:
        """``logits`` with every class outside the current experience at ``-inf``: the training loss of the
        references that learn each task's classes against each other only (InfLoRA, the prompt methods, MOS)."""
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        keep[list(self.experience.classes_in_this_experience)] = True
        return logits.masked_fill(~keep, float("-inf"))

    @torch.no_grad()
    def experience_features(self, features: Callable[[Tensor], Tensor], num_workers: int = 0) -> tuple[Tensor, Tensor]:
        """``features(images)`` and labels of the experience's training images, un-augmented, model in eval mode: the
        pass prototype and class-statistics methods make after each experience (SimpleCIL/APER/RanPAC, CL-LoRA, CaRE)."""
        dataset = self.experience.dataset.eval()
        args = self._obtain_common_dataloader_parameters(batch_size=self.eval_mb_size, num_workers=num_workers,
                                                         shuffle=False, pin_memory=None, persistent_workers=False)
        collate_from_data_or_kwargs(dataset, args)
        was_training = self.model.training
        self.model.eval()
        feats, labels = [], []
        try:
            for mb in SingleDatasetDataLoader(dataset, **args):
                feats.append(features(mb[0].to(self.device)))
                labels.append(mb[1].to(self.device))
        finally:
            self.model.train(was_training)
        return torch.cat(feats), torch.cat(labels)
