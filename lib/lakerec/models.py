"""Models: the torch matrix factorisation trained by DDP, and the factor form every scorer uses.

Any model that scores ``user_factors[u] . item_factors[i] + item_bias[i]`` (the trained model,
popularity, ALS) is a :class:`FactorModel`, so one blocked top-N scorer serves them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


HISTORY_BUFFERS = ("history_items", "history_weights", "history_start", "history_count", "history_total")


class MatrixFactorization(nn.Module):
    """User and item embeddings with an item bias: score = user . item + item bias.

    With a history (``set_history``) a user's vector is their id embedding plus the weighted mean
    of the embeddings of the items in their training history (SVD++ / FISM style), so what a user
    did recently can shape their vector directly. While training, each row's own positive is left
    out of that mean, or the model would learn to find the item it is given.
    """

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        nn.init.zeros_(self.item_bias.weight)
        self.has_history = False

    def set_history(self, users: torch.Tensor, items: torch.Tensor, weights: torch.Tensor) -> None:
        """Every (user, item, weight) of the training history, as buffers rebuilt from the data.

        Not in ``state_dict`` (checkpoints stay weight-sized); ``model.pt`` keeps them through
        :meth:`history_state`.
        """
        order = torch.argsort(users, stable=True)
        counts = torch.bincount(users, minlength=self.user.num_embeddings)
        totals = torch.zeros(self.user.num_embeddings, dtype=torch.float32).index_add_(0, users, weights.float())
        self.load_history_state({
            "history_items": items[order].long(), "history_weights": weights[order].float(),
            "history_start": torch.cumsum(counts, 0) - counts, "history_count": counts, "history_total": totals,
        })

    def history_state(self) -> dict[str, torch.Tensor]:
        """The history buffers, on the CPU."""
        return {name: getattr(self, name).cpu() for name in HISTORY_BUFFERS}

    def load_history_state(self, state: dict[str, torch.Tensor]) -> None:
        """Install history buffers made by :meth:`set_history` (or saved by :meth:`history_state`)."""
        for name in HISTORY_BUFFERS:
            self.register_buffer(name, state[name], persistent=False)
        self.has_history = True

    def history_mean(self, users: torch.Tensor, leave_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """Weighted mean item embedding of each user's history; ``leave_out`` = (items, weights) per row.

        Each distinct user's history is summed once per call: rows are drawn in proportion to
        activity, so the heaviest users (the longest histories) recur within a batch.
        """
        distinct, row_of = torch.unique(users, return_inverse=True)
        lengths = self.history_count[distinct]
        offsets = torch.cumsum(lengths, 0) - lengths
        owner = torch.repeat_interleave(torch.arange(len(distinct), device=users.device), lengths)
        at = self.history_start[distinct][owner] + torch.arange(len(owner), device=users.device) - offsets[owner]
        sums = F.embedding_bag(self.history_items[at], self.item.weight, offsets, mode="sum",
                               per_sample_weights=self.history_weights[at])[row_of]
        totals = self.history_total[users]
        if leave_out is not None:
            items, weights = leave_out
            sums = sums - weights.unsqueeze(1) * self.item(items)
            totals = totals - weights
        return sums / totals.clamp(min=1e-6).unsqueeze(1)

    def user_vectors(self, users: torch.Tensor, leave_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        if not self.has_history:
            return self.user(users)
        return self.user(users) + self.history_mean(users, leave_out)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item(items)

    def score(self, user_vecs: torch.Tensor, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores (batch, m): per-row ``items`` (batch, m), shared ``items`` (m,), or all items (None)."""
        if items is None:
            return user_vecs @ self.item.weight.T + self.item_bias.weight[:, 0]
        if items.dim() == 1:
            return user_vecs @ self.item(items).T + self.item_bias(items)[:, 0]
        return (user_vecs.unsqueeze(1) * self.item(items)).sum(-1) + self.item_bias(items).squeeze(-1)

    def forward(self, users: torch.Tensor, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores of ``users`` (see ``score``), each with their whole history."""
        return self.score(self.user_vectors(users), items)


class TwoTower(MatrixFactorization):
    """Hybrid two-tower model: each tower adds an id embedding to a projection of side features.

    User tower: id embedding + linear(user features, e.g. genre affinity). Item tower: id
    embedding + MLP(genre multi-hot, year, text embedding). During training the item id embedding
    is dropped for a share of the items scored in each step, so the content path alone ranks well:
    items with no interactions (cold start) are scored from their content.
    """

    def __init__(
        self, n_users: int, n_items: int, dim: int, user_side: torch.Tensor, item_side: torch.Tensor,
        hidden: int = 256, id_dropout: float = 0.2,
    ) -> None:
        super().__init__(n_users, n_items, dim)
        self.register_buffer("user_side", user_side.float())
        self.register_buffer("item_side", item_side.float())
        self.user_proj = nn.Linear(user_side.shape[1], dim)
        self.item_mlp = nn.Sequential(nn.Linear(item_side.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.id_dropout = id_dropout

    def user_vectors(self, users: torch.Tensor, leave_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        return super().user_vectors(users, leave_out) + self.user_proj(self.user_side[users])

    def item_vectors(self, items: torch.Tensor, use_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.item(items)
        if self.training and self.id_dropout > 0:
            ids = ids * (torch.rand(ids.shape[:-1] + (1,), device=ids.device) >= self.id_dropout)
        elif use_ids is not None:
            ids = ids * use_ids[items].unsqueeze(-1)
        return ids + self.item_mlp(self.item_side[items])

    def score(self, user_vecs: torch.Tensor, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        if items is None or items.dim() == 1:
            shared = torch.arange(self.item.num_embeddings, device=user_vecs.device) if items is None else items
            return user_vecs @ self.item_vectors(shared).T + self.item_bias(shared)[:, 0]
        return (user_vecs.unsqueeze(1) * self.item_vectors(items)).sum(-1) + self.item_bias(items).squeeze(-1)


class RatingHead(nn.Module):
    """Rating regression on the ranking model's vectors (multi-task): mean + b_u + b_i + sum_d w_d u_d v_d.

    The ranking embeddings are shared; the head adds only biases and one weight per dimension,
    which start at zero so the head begins as the biases model and does not disturb early ranking.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, mean: float) -> None:
        super().__init__()
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.weight = nn.Parameter(torch.zeros(dim))
        self.register_buffer("mean", torch.tensor(float(mean)))
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        interaction = (user_vecs * item_vecs * self.weight).sum(-1)
        return self.mean + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0] + interaction


class Objective(nn.Module):
    """The whole training loss in one forward call, which is what DDP wraps.

    Ranking loss (softmax, sampled softmax or BPR) on every row, a weighted mean when rows carry
    ``weights`` (recency weighting), plus ``rating_weight`` x the mean squared rating error of the
    head on the rows that carry a rating, when there is a head.
    """

    def __init__(self, model: MatrixFactorization, head: Optional[RatingHead], rating_weight: float) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.rating_weight = rating_weight

    def forward(
        self, users: torch.Tensor, pos: torch.Tensor, loss: str, negatives: Optional[torch.Tensor] = None,
        n_items: int = 0, l2: float = 0.0, ratings: Optional[torch.Tensor] = None,
        weights: Optional[torch.Tensor] = None, history_weights: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, rating MSE); the MSE is 0 without a head or ratings.

        ``history_weights``: each row's weight in its user's history, to leave the row's positive
        out of the history mean (models with a history; ones when not given).
        """
        leave_out = None
        if self.model.has_history:
            leave_out = (pos, torch.ones(len(pos), device=pos.device) if history_weights is None else history_weights)
        user_vecs = self.model.user_vectors(users, leave_out)
        if loss == "bpr":
            per_row = bpr_loss(self.model, user_vecs, pos, negatives, l2)
        else:
            per_row = softmax_loss(self.model, user_vecs, pos, negatives, n_items)
        ranking = per_row.mean() if weights is None else (per_row * weights).sum() / weights.sum()
        mse = torch.zeros((), device=users.device)
        if self.head is not None and ratings is not None:
            rated = ~torch.isnan(ratings)
            predicted = self.head(user_vecs, self.model.item_vectors(pos), users, pos)
            errors = torch.where(rated, predicted - ratings, torch.zeros_like(predicted))
            mse = errors.pow(2).sum() / rated.sum().clamp(min=1)
        return ranking + self.rating_weight * mse, mse


def bpr_loss(model: MatrixFactorization, user_vecs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, l2: float) -> torch.Tensor:
    """Bayesian personalised ranking, per row: a positive should outscore a sampled negative."""
    scores = model.score(user_vecs, torch.stack([pos, neg], dim=1))
    reg = user_vecs.pow(2).sum(-1) + model.item(pos).pow(2).sum(-1) + model.item(neg).pow(2).sum(-1)
    return -F.logsigmoid(scores[:, 0] - scores[:, 1]) + l2 * reg


def softmax_loss(
    model: MatrixFactorization, user_vecs: torch.Tensor, pos: torch.Tensor, negatives: Optional[torch.Tensor] = None,
    n_items: int = 0,
) -> torch.Tensor:
    """Cross-entropy of each positive item against the catalogue, per row.

    Without ``negatives``: the full softmax, every item a negative in every step (batch x catalogue
    scores). With ``negatives`` (m uniform item draws shared by the batch): the sampled softmax,
    negative logits raised by log(n_items / m) so the loss estimates the full one; a draw equal to
    the row's positive is masked.
    """
    if negatives is None:
        return F.cross_entropy(model.score(user_vecs), pos, reduction="none")
    batch = len(pos)
    scores = model.score(user_vecs, torch.cat([pos, negatives]))
    positive = scores[:, :batch].diagonal().unsqueeze(1)  # row r's own positive is column r
    sampled = scores[:, batch:] + math.log(n_items / len(negatives))
    sampled = sampled.masked_fill(negatives.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))
    target = torch.zeros(batch, dtype=torch.long, device=scores.device)
    return F.cross_entropy(torch.cat([positive, sampled], dim=1), target, reduction="none")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A trained parameter as a float32 numpy array, off the autograd graph and the device."""
    return tensor.detach().cpu().float().numpy()


@torch.no_grad()
def _all_user_vectors(model: MatrixFactorization, chunk: int = 1024) -> np.ndarray:
    """Every user's vector with their whole history, ``chunk`` users at a time (bounded memory)."""
    users = torch.arange(model.user.num_embeddings, device=model.user.weight.device)
    return np.concatenate([_to_numpy(model.user_vectors(users[i : i + chunk])) for i in range(0, len(users), chunk)])


@dataclass
class FactorModel:
    """Scores as ``user_factors @ item_factors.T + item_bias``; rows are user_idx / item_idx."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray

    @classmethod
    def from_mf(cls, model: MatrixFactorization) -> "FactorModel":
        return cls(
            _all_user_vectors(model),
            _to_numpy(model.item.weight),
            _to_numpy(model.item_bias.weight)[:, 0],
        )

    @classmethod
    @torch.no_grad()
    def from_two_tower(cls, model: TwoTower, trained_items: torch.Tensor) -> "FactorModel":
        """Export tower outputs; items never seen in training keep only their content vector."""
        model.eval()
        device = model.user.weight.device  # a GPU rank exports from its device
        items = torch.arange(model.item.num_embeddings, device=device)
        use_ids = trained_items.float().to(device)
        return cls(
            _all_user_vectors(model),
            _to_numpy(model.item_vectors(items, use_ids)),
            _to_numpy(model.item_bias.weight[:, 0] * use_ids),
        )

    @classmethod
    def popularity(cls, n_users: int, item_counts: np.ndarray) -> "FactorModel":
        """The popularity baseline: the same ranking for everyone, by training interaction count."""
        return cls(
            np.zeros((n_users, 1), np.float32),
            np.zeros((len(item_counts), 1), np.float32),
            np.log1p(item_counts.astype(np.float32)),
        )

    def save(self, path: Path) -> None:
        np.savez(path, user_factors=self.user_factors, item_factors=self.item_factors, item_bias=self.item_bias)

    @classmethod
    def load(cls, path: Path) -> "FactorModel":
        with np.load(path) as z:
            return cls(z["user_factors"], z["item_factors"], z["item_bias"])


def top_n_block(
    user_factors: torch.Tensor,
    item_factors: torch.Tensor,
    item_bias: torch.Tensor,
    seen_lengths: np.ndarray,
    seen_items: np.ndarray,
    n: int,
    out: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` unseen items for one block of users: (scores, item_idx), each (block, k).

    ``seen_items`` holds every user's training items back to back, ``seen_lengths[u]`` of them for
    user ``u`` (the Arrow list layout). ``out`` is an optional (>= block, items) buffer to score into.
    Order is score descending, then item_idx ascending, so ties are broken deterministically, at
    the cut too: of several items tied at the n-th score, the lowest item_idx get in.
    Slots past a user's unseen items hold ``-inf`` scores and must be dropped by the caller.
    Runs on the factors' device (the scorer's CPU workers; a GPU for the bound in bench/).
    """
    n_users, n_items = user_factors.shape[0], item_factors.shape[0]
    scores = torch.addmm(item_bias, user_factors, item_factors.T, out=None if out is None else out[:n_users])
    if len(seen_items):
        flat = np.repeat(np.arange(n_users, dtype=np.int64) * n_items, seen_lengths) + seen_items
        scores.view(-1)[torch.from_numpy(flat).to(scores.device)] = float("-inf")
    k = min(n, n_items)
    values, items = torch.topk(scores, min(k + 1, n_items), dim=1)  # one past the cut shows a tie at it
    values, items = _lowest_items_at_the_cut(scores, values, items, k)
    items, by_item = torch.sort(items, dim=1)
    values = torch.gather(values, 1, by_item)
    values, by_score = torch.sort(values, dim=1, descending=True, stable=True)
    items = torch.gather(items, 1, by_score)
    return values.cpu().numpy(), items.cpu().numpy()


def _lowest_items_at_the_cut(
    scores: torch.Tensor, values: torch.Tensor, items: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` of a top-(k+1): where items tie at the k-th score, the lowest item_idx among them.

    ``torch.topk`` picks any of the tied items, by hardware and version. A row ties at the cut when
    its (k+1)-th score equals its k-th (popularity counts often do); only those rows are chosen
    again, all at once: everything above the cut, then tied items in index order. Masked (-inf)
    and NaN cuts are left alone: the caller drops or rejects those.
    """
    if values.shape[1] == k:  # k is the whole catalogue: no cut
        return values, items
    cut = values[:, k - 1 : k]
    rows = torch.nonzero(torch.isfinite(cut[:, 0]) & (values[:, k] == cut[:, 0])).flatten()
    values, items = values[:, :k].clone(), items[:, :k].clone()
    if len(rows):
        tied_scores, tied_cut = scores[rows], cut[rows]
        above = tied_scores > tied_cut
        at_cut = tied_scores == tied_cut
        chosen = above | (at_cut & (at_cut.cumsum(1) <= k - above.sum(1, keepdim=True)))
        items[rows] = torch.nonzero(chosen)[:, 1].view(len(rows), k)  # row-major: each row's k items, by index
        values[rows] = tied_scores.gather(1, items[rows])
    return values, items


@dataclass
class RatingPredictor:
    """The trained rating head beside a :class:`FactorModel`: the form evaluation predicts ratings with.

    rating(u, i) = mean + user_bias[u] + item_bias[i] + sum_d user_factors[u, d] * weight[d] * item_factors[i, d]
    """

    mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    weight: np.ndarray

    @classmethod
    def from_head(cls, head: RatingHead) -> "RatingPredictor":
        return cls(
            float(head.mean.item()),
            _to_numpy(head.user_bias.weight)[:, 0],
            _to_numpy(head.item_bias.weight)[:, 0],
            _to_numpy(head.weight),
        )

    def predict(self, factors: FactorModel, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        interaction = np.einsum("nd,nd->n", factors.user_factors[users] * self.weight, factors.item_factors[items])
        return self.mean + self.user_bias[users] + self.item_bias[items] + interaction

    def save(self, path: Path) -> None:
        np.savez(path, mean=np.float32(self.mean), user_bias=self.user_bias, item_bias=self.item_bias, weight=self.weight)

    @classmethod
    def load(cls, path: Path) -> "RatingPredictor":
        with np.load(path) as z:
            return cls(float(z["mean"]), z["user_bias"], z["item_bias"], z["weight"])
