"""Validation split for early stopping: exported by the driver, scored by the trainer without Spark.

The driver writes the validation positives of a bounded sample of users, with those users'
training items (to mask), into ``validation.npz``; after each epoch rank 0 ranks the full
catalogue for them and computes NDCG@K with the same metric code as the evaluation job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lakerec.metrics import ndcg_at_k
from lakerec.models import FactorModel

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakerec.config import Config


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


def export(spark: "SparkSession", cfg: "Config", max_users: int, n_users: int, n_items: int) -> ValidationSet | None:
    """A deterministic sample of at most ``max_users`` users with validation positives; None without a split."""
    from pyspark.sql import functions as F

    from lakerec import tables
    from lakerec.features import TRAIN, VALIDATION

    silver = tables.read(spark, cfg, tables.SILVER_INTERACTIONS).where(
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
    """Mean NDCG@k over the validation users: full ranking, training items masked."""
    scores = torch.from_numpy(model.user_factors[val.users]) @ torch.from_numpy(model.item_factors).T
    scores += torch.from_numpy(model.item_bias)
    rows = torch.from_numpy(np.repeat(np.arange(len(val.users)), [len(s) for s in val.seen]))
    if len(rows):
        scores[rows, torch.from_numpy(np.concatenate(val.seen))] = float("-inf")
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.numpy()
    return float(np.mean([ndcg_at_k(top[row].tolist(), rel, k) for row, rel in enumerate(val.relevant)]))
