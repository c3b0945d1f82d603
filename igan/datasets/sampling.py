"""The labelled subset of semi-supervised training, chosen exactly as the reference code does.

The reference scripts (paper-notes §2.2) permute the whole training set with
``numpy.random.RandomState(seed_data)`` and take, for each class in turn, the first ``count``
examples in that permuted order. Using the same numpy generator (not torch's) is what makes
``seed_data=1`` select the very images the paper's runs used, given the same training order.
"""

from __future__ import annotations

import numpy as np
import torch

from igan.errors import UsageError

__all__ = ["balanced_labeled_subset"]


def balanced_labeled_subset(labels: torch.Tensor, per_class: int, seed: int,
                            num_classes: int | None = None) -> torch.Tensor:
    """Indices (int64) of ``per_class`` examples of each class: class 0's first, then class 1's...

    ``num_classes`` defaults to ``max(labels) + 1``. Raises ``UsageError`` when a class has fewer
    than ``per_class`` examples.
    """
    if per_class < 1:
        raise UsageError(f"the labelled subset needs at least 1 example per class, got {per_class}")
    y = labels.detach().cpu().numpy().reshape(-1)
    if y.size == 0:
        raise UsageError("cannot draw a labelled subset from an empty training set")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    order = np.random.RandomState(seed).permutation(y.shape[0])
    permuted = y[order]
    chosen = []
    for c in range(classes):
        picked = order[permuted == c][:per_class]
        if picked.shape[0] < per_class:
            raise UsageError(
                f"class {c} has {picked.shape[0]} training examples, fewer than the {per_class} "
                f"labels per class asked for",
                hint=(f"ask for at most {picked.shape[0]} labels per class" if picked.shape[0]
                      else "the labels do not cover every class; check num_classes"))
        chosen.append(picked)
    return torch.from_numpy(np.concatenate(chosen).astype(np.int64))
