"""Validation split for early stopping: exported by the driver, scored by the trainer without Spark.

The driver writes the validation positives of a bounded sample of users, with those users'
training items (to mask), into ``validation.npz``; after each epoch rank 0 ranks the full
catalogue for them with the scorer's masked top-N (:func:`lakerec.models.top_n_block`, so ties
fall as in the served and evaluated lists) and computes NDCG@K with the pure-Python twin of the
evaluation's metric (:func:`lakerec.metrics.ndcg_at_k`). Spark is imported only inside
:func:`export`, which runs on the driver: training workers import this module without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lakerec.metrics import ndcg_at_k
from lakerec.models import FactorModel, top_n_block

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass
class ValidationSet:
    users: np.ndarray  # distinct user_idx
    relevant: list[set[int]]  # validation positives per user, aligned with users
    seen: list[np.ndarray]  # training items per user, masked out of the ranking

    def save(self, path: Path) -> None:
        np.savez(
            path, users=self.users,
            rel_u=np.repeat(self.users, [len(r) for r in self.relevant]),
            rel_i=np.array([i for r in self.relevant for i in sorted(r)], dtype=np.int64),
            seen_u=np.repeat(self.users, [len(s) for s in self.seen]),
            seen_i=np.concatenate(self.seen) if self.seen else np.zeros(0, np.int64),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ValidationSet":
        with np.load(path) as z:
            users, rel_u, rel_i, seen_u, seen_i = (z[k] for k in ("users", "rel_u", "rel_i", "seen_u", "seen_i"))
        return cls(
            users,
            [set(rel_i[rel_u == u].tolist()) for u in users],
            [seen_i[seen_u == u] for u in users],
        )


def export(silver: "DataFrame", max_users: int, n_users: int, n_items: int) -> ValidationSet | None:
    """A deterministic sample of at most ``max_users`` users with validation positives of ``silver``
    (the night's interactions); None without a validation split."""
    from pyspark.sql import functions as F

    from lakerec.features import TRAIN, VALIDATION

    silver = silver.where(
        (F.col("user_idx") < n_users) & (F.col("item_idx") < n_items)
    )
    val = silver.where((F.col("split") == VALIDATION) & (F.col("label") > 0))
    users = val.select("user_idx").distinct().orderBy(F.xxhash64("user_idx"), "user_idx").limit(max_users)
    rel = val.join(users, "user_idx").groupBy("user_idx").agg(F.collect_list("item_idx").alias("items")).toPandas()
    if rel.empty:
        return None
    seen = (
        silver.where(F.col("split") == TRAIN).join(users, "user_idx")
        .groupBy("user_idx").agg(F.collect_list("item_idx").alias("items")).toPandas()
    )
    seen_by_user = dict(zip(seen["user_idx"], seen["items"]))
    rel = rel.sort_values("user_idx")
    return ValidationSet(
        rel["user_idx"].to_numpy(np.int64),
        [set(items) for items in rel["items"]],
        [np.asarray(seen_by_user.get(u, []), dtype=np.int64) for u in rel["user_idx"]],
    )


@torch.no_grad()
def ndcg(model: FactorModel, val: ValidationSet, k: int = 10) -> float:
    """Mean NDCG@k over the validation users, ranked by the scorer's masked top-N (its order, its ties)."""
    scores, top = top_n_block(
        torch.from_numpy(np.ascontiguousarray(model.user_factors[val.users], dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(model.item_factors, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(model.item_bias, dtype=np.float32)),
        np.array([len(s) for s in val.seen], dtype=np.int64),
        np.concatenate(val.seen).astype(np.int64) if val.seen else np.zeros(0, np.int64),
        k,
    )
    # -inf slots are masked items, past a user's unseen ones: dropped, as the scorer drops them.
    lists = [items[~np.isneginf(row)].tolist() for row, items in zip(scores, top)]
    return float(np.mean([ndcg_at_k(items, rel, k) for items, rel in zip(lists, val.relevant)]))
