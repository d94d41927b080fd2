"""Metrics in pure Python: the reference twins of the Spark metrics in :mod:`lakerec.metrics_spark`.

No Spark import here: :mod:`lakerec.validation` uses these in training workers, on GPU nodes without Spark.

Ranking metrics use binary relevance. A user's list is ranked best first. Averages are over users
with at least one relevant item; a user with no recommendations scores 0. MAP@K divides by
min(|relevant|, K). Beyond-accuracy metrics (coverage, novelty, diversity) look at the top-K
lists only, whatever is relevant; rating error (RMSE, MAE) at (prediction, rating) pairs.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Hashable, Iterable, Mapping, Sequence


def precision_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    """Share of the top-``k`` slots holding a relevant item (empty slots count as misses)."""
    return sum(1 for item in recommended[:k] if item in relevant) / k


def recall_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    """Share of the relevant items found in the top-``k``."""
    return sum(1 for item in recommended[:k] if item in relevant) / len(relevant) if relevant else 0.0


def ndcg_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    """DCG of the top-``k`` over the DCG of an ideal list: rewards relevant items ranked early."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(recommended[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def average_precision_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    """Mean precision at each hit in the top-``k``, divided by min(|relevant|, ``k``)."""
    hits, total = 0, 0.0
    for rank, item in enumerate(recommended[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k) if relevant else 0.0


def hit_rate_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    """1 when any relevant item is in the top-``k``, else 0."""
    return 1.0 if any(item in relevant for item in recommended[:k]) else 0.0


PER_USER = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": average_precision_at_k,
    "hit_rate": hit_rate_at_k,
}


def mean_ranking_metrics(
    recommendations: Mapping[Hashable, Sequence[Hashable]], relevant: Mapping[Hashable, set], k: int
) -> dict[str, float]:
    """Every metric in :data:`PER_USER`, averaged over the users in ``relevant`` that have any."""
    users = [u for u, items in relevant.items() if items]
    if not users:
        return {name: 0.0 for name in PER_USER}
    return {
        name: sum(fn(list(recommendations.get(u, [])), relevant[u], k) for u in users) / len(users)
        for name, fn in PER_USER.items()
    }


def catalogue_coverage(recommendations: Mapping[Hashable, Sequence[Hashable]], n_items: int, k: int) -> float:
    """Distinct items in anyone's top-``k``, as a share of the ``n_items`` catalogue."""
    items = {item for recs in recommendations.values() for item in list(recs)[:k]}
    return len(items) / n_items if n_items else 0.0


def novelty(recommendations: Mapping[Hashable, Sequence[Hashable]], item_counts: Mapping[Hashable, int], k: int) -> float:
    """Mean self-information ``-log2(count_i / total)`` over every recommended (user, item) in the top-``k``.

    ``item_counts`` are training interactions per item; ``total`` is their sum. An item never seen in
    training counts as seen once, so its self-information stays finite (the largest possible).
    """
    total = sum(item_counts.values())
    infos = [
        -math.log2(max(item_counts.get(item, 0), 1) / total)
        for recs in recommendations.values() for item in list(recs)[:k]
    ]
    return sum(infos) / len(infos) if infos and total else 0.0


def _cosine_distance(a: set, b: set) -> float:
    """Cosine distance of two genre sets as binary vectors."""
    return 1.0 - len(a & b) / math.sqrt(len(a) * len(b))


def intra_list_diversity(
    recommendations: Mapping[Hashable, Sequence[Hashable]], item_genres: Mapping[Hashable, set], k: int
) -> float:
    """Mean over users of the mean pairwise cosine distance between the genre sets in their top-``k``.

    Items without genres carry no information and are left out; users left with fewer than two
    items do not count.
    """
    per_user = []
    for recs in recommendations.values():
        genred = [item_genres[i] for i in list(recs)[:k] if item_genres.get(i)]
        pairs = list(combinations(genred, 2))
        if pairs:
            per_user.append(sum(_cosine_distance(a, b) for a, b in pairs) / len(pairs))
    return sum(per_user) / len(per_user) if per_user else 0.0


def rmse(pairs: Iterable[tuple[float, float]]) -> float:
    """Root mean squared error over (prediction, rating) pairs."""
    errors = [(p - r) ** 2 for p, r in pairs]
    return math.sqrt(sum(errors) / len(errors)) if errors else 0.0


def mae(pairs: Iterable[tuple[float, float]]) -> float:
    """Mean absolute error over (prediction, rating) pairs."""
    errors = [abs(p - r) for p, r in pairs]
    return sum(errors) / len(errors) if errors else 0.0
