"""Nearest class mean on the frozen backbone with L2-normalised prototypes: the harness's ``ncm`` method.

SimpleCIL (:mod:`benchmarks.peers.aper`) averages raw features; ``ncm`` averages L2-normalised ones and normalises
the mean, through Avalanche's ``NCMClassifier``. Both rank classes by cosine similarity at test time.
"""

from __future__ import annotations

import torch
from avalanche.models import NCMClassifier
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from .exact_load import load_exactly


class NCMStrategy(SupervisedTemplate):
    """Frozen backbone + cosine nearest-class-mean (Avalanche's NCMClassifier, normalize=True).

    Avalanche has no strategy for a training-free prototype classifier, so training is one
    no-grad pass that averages L2-normalised features per class.
    """

    def __init__(self, *, backbone: nn.Module, **kwargs) -> None:
        model = nn.Sequential(backbone, NCMClassifier(normalize=True))
        for p in model.parameters():
            p.requires_grad_(False)
        super().__init__(model=model, optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0),
                         criterion=nn.CrossEntropyLoss(), **kwargs)

    def make_optimizer(self, **kwargs) -> None:  # nothing to optimise
        pass

    @torch.no_grad()
    def training_epoch(self, **kwargs) -> None:
        backbone, ncm = self.model[0], self.model[1]
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for self.mbatch in self.dataloader:
            self._unpack_minibatch()
            f = nn.functional.normalize(backbone(self.mb_x), dim=1)
            for c in self.mb_y.unique().tolist():
                sel = f[self.mb_y == c]
                sums[c] = sums.get(c, 0) + sel.sum(0)
                counts[c] = counts.get(c, 0) + len(sel)
        # Unit-norm prototypes: Euclidean distance on unit vectors ranks classes as cosine similarity.
        ncm.update_class_means_dict({c: nn.functional.normalize(sums[c] / counts[c], dim=0) for c in sums},
                                    momentum=1.0)

    def train_dataset_adaptation(self, **kwargs) -> None:
        super().train_dataset_adaptation(**kwargs)
        self.adapted_dataset = self.adapted_dataset.eval()  # prototypes from un-augmented images

    # Checkpoints (benchmarks.peer_checkpoint). NCMClassifier keeps its means twice: the ``class_means`` buffer (None
    # until the first experience, so a fresh model has no such key) and ``class_means_dict``, which also holds zero
    # vectors for classes only evaluated so far; its own load_state_dict refills the dict from non-zero rows only and
    # lowers ``max_class``, so the dict's keys and ``max_class`` travel in the structure instead.
    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The model's state dict: the frozen backbone and the class means."""
        return dict(self.model.state_dict())

    def checkpoint_structure(self) -> dict:
        """The means' shape, the classes the classifier's dictionary holds (in its order) and ``max_class``."""
        ncm: NCMClassifier = self.model[1]
        means = ncm.class_means
        return {"means_shape": None if means is None else list(means.shape),
                "classes": [int(c) for c in ncm.class_means_dict], "max_class": int(ncm.max_class)}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Give a fresh classifier the checkpoint's means buffer, load strictly, then rebuild its dictionary."""
        backbone, ncm = self.model[0], self.model[1]
        if set(structure) != {"means_shape", "classes", "max_class"}:
            raise ValueError(f"{type(self).__name__}: checkpoint structure {sorted(structure)} is not ncm's "
                             "(['classes', 'max_class', 'means_shape']); it was written by another method")
        shape = structure["means_shape"]
        if shape is not None:
            device = next(backbone.parameters()).device
            ncm.class_means = torch.zeros(shape, device=device)
        load_exactly(self.model, tensors, type(self).__name__)
        rows = 0 if shape is None else shape[0]
        beyond = [c for c in structure["classes"] if not 0 <= c < rows]
        if beyond:
            raise ValueError(f"{type(self).__name__}: the checkpoint's classes {beyond[:5]} have no row among its "
                             f"{rows} class means; the checkpoint is damaged: start a new run")
        ncm.class_means_dict = {c: ncm.class_means[c].clone() for c in structure["classes"]}
        ncm.max_class = int(structure["max_class"])

    def criterion(self):
        """Cross-entropy of the prototype scores (negative distances): the test loss the logs record. Training
        takes no loss (its one pass averages features)."""
        return nn.functional.cross_entropy(self.mb_output, self.mb_y)


def stored_params(strategy: SupervisedTemplate) -> int:
    """The class means (nothing else is kept beyond the frozen backbone)."""
    means = strategy.model[1].class_means
    return 0 if means is None else int(means.numel())
