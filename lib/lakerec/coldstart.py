"""Cold start: vectors for users the serving model has none for, and for items nobody has interacted with.

A user's fold-in vector is what the model's history term would give them: the weighted mean of the
vectors of the items in their history (``MatrixFactorization.history_mean``), with the trainer's weights.
"""
from __future__ import annotations

import numpy as np


def history_weights(recency: np.ndarray, decay: float) -> np.ndarray:
    """The trainer's history weights: exp(decay x (recency - 1)), recency 1 the user's newest item; 0: all ones."""
    if decay <= 0:
        return np.ones(len(recency), np.float32)
    return np.exp(decay * (np.asarray(recency, np.float32) - 1.0)).astype(np.float32)


def fold_in(item_factors: np.ndarray, owners: np.ndarray, items: np.ndarray, weights: np.ndarray,
            n_owners: int) -> np.ndarray:
    """(n_owners, dim): row u is the ``weights``-weighted mean of ``item_factors[items]`` over rows with
    ``owners == u``; zeros for an owner with no rows. ``owners`` are positions 0..n_owners-1."""
    sums = np.zeros((n_owners, item_factors.shape[1]), np.float64)
    np.add.at(sums, owners, item_factors[items].astype(np.float64) * weights[:, None])
    totals = np.bincount(owners, weights=weights, minlength=n_owners)
    return (sums / np.maximum(totals, 1e-12)[:, None]).astype(np.float32)
