"""Ranking metrics in pure Python: the reference twins of the Spark implementation in evaluate.py.

Binary relevance. A user's list is ranked best first. Averages are over users with at least one
relevant item; a user with no recommendations scores 0. MAP@K divides by min(|relevant|, K).
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence


def precision_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    return sum(1 for item in recommended[:k] if item in relevant) / k


def recall_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    return sum(1 for item in recommended[:k] if item in relevant) / len(relevant) if relevant else 0.0


def ndcg_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(recommended[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def average_precision_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
    hits, total = 0, 0.0
    for rank, item in enumerate(recommended[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k) if relevant else 0.0


def hit_rate_at_k(recommended: Sequence[Hashable], relevant: set, k: int) -> float:
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
