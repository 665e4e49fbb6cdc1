"""Check each experience's inputs before they reach the model (:mod:`avalanche_sdlora.input_checks`)."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from ..input_checks import check_images, check_labels, warn_task_labels


def _model(strategy):
    return getattr(strategy.model, "module", strategy.model)  # under DistributedDataParallel: the wrapped model


class InputCheckPlugin(SupervisedPlugin, supports_distributed=True):
    """One sentence naming the experience, the value and the fix for a wrong image or label, on its first batch.

    Before an experience changes anything: class ids must be non-negative integers, and task labels other than 0 get
    a note (SD-LoRA ignores them). On the first minibatch of every training and evaluation experience: the images'
    dtype, layout, channels and size against the backbone, and the labels against the head's width (one host read
    per experience; no per-step cost).
    """

    def __init__(self) -> None:
        super().__init__()
        self._eval_checked = False

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        """Check the experience's class ids and note task labels."""
        exp = strategy.experience
        self._check_classes(exp, "training")
        warn_task_labels(getattr(exp, "task_labels", None) or (), exp.current_experience)

    def before_eval_dataset_adaptation(self, strategy, **kwargs) -> None:
        """Check the evaluation experience's class ids."""
        self._check_classes(strategy.experience, "evaluation")

    def before_training_iteration(self, strategy, **kwargs) -> None:
        """Check the first training minibatch of the experience."""
        if strategy.clock.train_exp_iterations == 0:
            self._check_batch(strategy, "training")

    def before_eval_exp(self, strategy, **kwargs) -> None:
        """The first minibatch of this evaluation experience is checked again."""
        self._eval_checked = False

    def before_eval_iteration(self, strategy, **kwargs) -> None:
        """Check the first evaluation minibatch of the experience."""
        if not self._eval_checked:
            self._eval_checked = True
            self._check_batch(strategy, "evaluation")

    @staticmethod
    def _check_classes(exp, phase: str) -> None:
        classes = list(getattr(exp, "classes_in_this_experience", None) or ())
        if not classes:  # none listed (an online sub-experience): the growth plugin says what it needs
            return
        check_labels(classes, float("inf"), f"the class ids of {phase} experience {exp.current_experience}")

    @staticmethod
    def _check_batch(strategy, phase: str) -> None:
        model = _model(strategy)
        where = f"{phase} experience {strategy.experience.current_experience}"
        check_images(strategy.mb_x, model.backbone, f"the images of {where}")
        head = getattr(model, "head", None)
        check_labels(strategy.mb_y, head.num_classes if head is not None else float("inf"), f"the labels of {where}")
