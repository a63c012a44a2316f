"""Hooks into the training loop, for what changes no loss: e.g. the weight average
(:class:`eventrec.training.weight_average.WeightAverage`).

The trainer calls :meth:`Callback.after_step` after each optimizer step, validates and keeps "best"
inside every callback's :meth:`Callback.weights_for_validation`, saves :meth:`Callback.state_tensors`
with each ``last/`` checkpoint and gives them back through :meth:`Callback.load_state` on resume.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


class Callback:
    """A no-op callback; subclasses override what they need."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def weights_for_validation(self) -> AbstractContextManager:
        """A context within which the model holds the weights to validate and keep."""
        return nullcontext()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save with the resumable (``last/``) checkpoint; names unique to this callback."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_tensors` from a resumed checkpoint's extra tensors."""
