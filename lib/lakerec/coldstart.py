"""Cold start: vectors for users the serving model has none for, and for items nobody has interacted with.

A user's fold-in vector is what the model's history term would give them: the weighted mean of the
vectors of the items in their history (``MatrixFactorization.history_mean``), with the trainer's weights.
A segment list ranks the items the positives of the user's segment (``features/user_segments``) hold.
A cold item's vector and bias are a ridge regression from its content (text embedding, genres),
fitted on the warm items. Every path is a :class:`FactorModel`, so the one top-N scorer serves it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import embed, tables
from lakerec.config import Config
from lakerec.models import FactorModel
from lakerec.snapshot import Snapshot, checked_ds

log = logging.getLogger(__name__)

FOLD_IN_REASON = "fold_in"
SEGMENT_REASON = "segment"
BLEND_REASON = "blend"
POPULARITY_REASON = "popularity_fallback"


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


# ---------------------------------------------------------------- cold items

def content_map(content: np.ndarray, targets: np.ndarray, warm: np.ndarray, l2: float) -> np.ndarray:
    """``targets`` predicted for every row of ``content`` by a ridge regression (penalty ``l2``, closed
    form, centred so the intercept is free) fitted on the ``warm`` rows; ``targets`` itself with no warm row.

    Content explains only part of an item's vector, so raw predictions huddle at the mean and a cold item
    would score like an average one, below every top-N. Each column's deviations are rescaled to the warm
    targets' spread (on ml-latest-small recall@100 of cold items rose from 0.015 to 0.17, BENCHMARKS.md).
    """
    if not warm.any():
        return targets
    x, y = content[warm].astype(np.float64), targets[warm].astype(np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    fitted_std = (xc @ weights).std(axis=0)
    scale = np.where(fitted_std > 1e-12, y.std(axis=0) / np.maximum(fitted_std, 1e-12), 0.0)
    return ((content - x_mean) @ weights * scale + y_mean).astype(np.float32)


def with_content_items(model: FactorModel, content: np.ndarray, warm: np.ndarray, l2: float) -> FactorModel:
    """``model`` with one item row per ``content`` row; rows not ``warm`` (no interactions, or newer than
    the model) take the vector and bias their content maps to, learnt from the warm items."""
    n_items, n_model = len(content), model.item_factors.shape[0]
    dim = model.item_factors.shape[1]
    targets = np.zeros((n_items, dim + 1), np.float32)
    targets[:n_model, :dim], targets[:n_model, dim] = model.item_factors[:n_items], model.item_bias[:n_items]
    warm = warm & (np.arange(n_items) < n_model)
    mapped = np.where(warm[:, None], targets, content_map(content, targets, warm, l2))
    log.info("cold items: %d of %d items take content vectors", int((~warm).sum()), n_items)
    return FactorModel(model.user_factors, mapped[:, :dim].copy(), mapped[:, dim].copy())


def item_content(spark: SparkSession, cfg: Config, snap: Snapshot, n_items: int) -> np.ndarray:
    """(n_items, text dim + genres): each catalogue item's text embedding (zeros without one) and genre
    vector, rows by item_idx; genres alone when no text embeddings exist."""
    items = snap.read(spark, cfg, tables.ITEM_FEATURES).select("item_idx", "item_key", "genre_vector")
    text = embed.embeddings_by(spark, cfg, snap.ds)
    if text is not None:
        items = items.join(text, "item_key", "left")
    else:
        items = items.withColumn("embedding", F.lit(None).cast("array<float>"))
    pdf = items.select("item_idx", "genre_vector", "embedding").toPandas()
    has_text = pdf["embedding"].notna()
    text_dim = len(pdf.loc[has_text, "embedding"].iloc[0]) if has_text.any() else 0
    n_genres = len(pdf["genre_vector"].iloc[0]) if len(pdf) else 0
    content = np.zeros((n_items, text_dim + n_genres), np.float32)
    if len(pdf):
        content[pdf["item_idx"].to_numpy(), text_dim:] = np.stack(pdf["genre_vector"].to_numpy())
    if text_dim:
        rows = pdf.loc[has_text]
        content[rows["item_idx"].to_numpy(), :text_dim] = np.stack(rows["embedding"].to_numpy())
    return content


# ---------------------------------------------------------------- cold users

@dataclass
class ColdUsers:
    """Users the model does not serve, in row order: their user_idx, what each has, and the path chosen."""

    user_idx: np.ndarray
    segment: np.ndarray  # -1: none tonight
    history_owner: np.ndarray  # (rows): positions into user_idx, with history_item and history_recency
    history_item: np.ndarray
    history_recency: np.ndarray

    def reasons(self, method: str) -> np.ndarray:
        """Each user's path: ``method`` for users with positives, falling back to fold_in without a
        segment; a positive-less user with a segment gets the segment's list; nothing at all: popularity."""
        has_positives = np.bincount(self.history_owner, minlength=len(self.user_idx)) > 0
        has_segment = self.segment >= 0
        wanted = np.full(len(self.user_idx), method, object)  # the methods are named as their reasons
        wanted[~has_segment] = FOLD_IN_REASON
        return np.where(has_positives, wanted,
                        np.where(has_segment, SEGMENT_REASON, POPULARITY_REASON)).astype(object)


def segment_scores(segment_counts: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """(items, segments): log(1 + positives of the segment's members); ties go to global popularity, which
    adds less than one positive (count / (max count + 1)), so it never reorders different counts."""
    tie_break = item_counts / (item_counts.max(initial=0) + 1.0)
    return np.log1p(segment_counts + tie_break[:, None]).astype(np.float32)


def _per_row_std(user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Std over items of each row's scores ``user_vectors @ item_vectors.T``, from the items' covariance
    (``dim x dim``): never a users x items matrix."""
    cov = np.cov(item_vectors.astype(np.float64), rowvar=False, bias=True).reshape(item_vectors.shape[1], -1)
    variance = np.einsum("ud,de,ue->u", user_vectors, cov, user_vectors)
    return np.sqrt(np.maximum(variance, 1e-12)).astype(np.float32)


def cold_user_model(model: FactorModel, cold: ColdUsers, reasons: np.ndarray, segment_counts: np.ndarray,
                    item_counts: np.ndarray, catalogue: np.ndarray, decay: float, blend_weight: float) -> FactorModel:
    """One FactorModel, a row per cold user, serving every path at once by concatenated factor blocks.

    Items: [item vector, item bias | a column per segment (:func:`segment_scores`) | log(1 + positives)].
    A fold-in user is [fold-in vector, 1 | 0 | 0], a segment user [0 | one-hot | 0], a popularity user
    [0 | 0 | 1]. A blend user is w x (fold-in block / its score std) + (1 - w) x (one-hot / the segment
    column's std): each path's scores standardised over the catalogue (the mean is the same for every
    item of a user, so it does not change the order), so ``blend_weight`` w weighs comparable units.
    """
    n, dim = len(cold.user_idx), model.item_factors.shape[1]
    n_segments = segment_counts.shape[1]
    items = np.hstack([model.item_factors, model.item_bias[:, None], segment_scores(segment_counts, item_counts),
                       np.log1p(item_counts)[:, None]]).astype(np.float32)
    known = cold.history_item < len(items)  # without cold items, an item newer than the model has no vector
    folded = fold_in(model.item_factors, cold.history_owner[known], cold.history_item[known],
                     history_weights(cold.history_recency[known], decay), n)
    fold_block = np.hstack([folded, np.ones((n, 1), np.float32)])
    one_hot = np.zeros((n, n_segments), np.float32)
    with_segment = np.flatnonzero(cold.segment >= 0)
    one_hot[with_segment, cold.segment[with_segment]] = 1.0
    in_cat = items[catalogue]
    blend = reasons == BLEND_REASON
    fold_std = _per_row_std(fold_block[blend], in_cat[:, : dim + 1])
    segment_std = np.maximum(in_cat[:, dim + 1 : dim + 1 + n_segments].std(axis=0), 1e-6)
    users = np.zeros((n, items.shape[1]), np.float32)
    users[reasons == FOLD_IN_REASON, : dim + 1] = fold_block[reasons == FOLD_IN_REASON]
    users[reasons == SEGMENT_REASON, dim + 1 : dim + 1 + n_segments] = one_hot[reasons == SEGMENT_REASON]
    users[reasons == POPULARITY_REASON, -1] = 1.0
    users[blend, : dim + 1] = blend_weight * fold_block[blend] / fold_std[:, None]
    users[blend, dim + 1 : dim + 1 + n_segments] = (1 - blend_weight) * one_hot[blend] / segment_std
    return FactorModel(users, items, np.zeros(len(items), np.float32))


def night_segments(spark: SparkSession, cfg: Config, ds: str) -> DataFrame | None:
    """(user_idx, segment) of ``ds`` from ``features/user_segments``; None when segments are off or absent."""
    if not cfg.segment.enabled or not tables.exists(spark, cfg, tables.USER_SEGMENTS):
        return None
    return tables.read(spark, cfg, tables.USER_SEGMENTS).where(F.col("ds") == checked_ds(ds)).select("user_idx", "segment")


def segment_item_counts(examples: DataFrame, segments: DataFrame | None, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(the night's segment ids, (n_items, segments) positives of each segment's members); none without segments."""
    if segments is None:
        return np.zeros(0, np.int64), np.zeros((n_items, 0), np.float32)
    ids = np.sort(segments.select("segment").distinct().toPandas()["segment"].to_numpy(np.int64))
    rows = (examples.where(F.col("item_idx") < n_items).join(segments, "user_idx")
            .groupBy("segment", "item_idx").count().toPandas())
    counts = np.zeros((n_items, len(ids)), np.float32)
    counts[rows["item_idx"].to_numpy(np.int64), np.searchsorted(ids, rows["segment"].to_numpy(np.int64))] = rows["count"]
    return ids, counts


def cold_users(users: DataFrame, examples: DataFrame, segments: DataFrame | None, segment_ids: np.ndarray) -> ColdUsers:
    """``users`` (user_idx) with their segment's position in ``segment_ids`` (-1: none tonight) and their
    positives (user_idx, item_idx, recency) in ``examples``, collected to the driver: cold users are few."""
    if segments is not None:
        users = users.join(segments, "user_idx", "left")
    else:
        users = users.withColumn("segment", F.lit(None).cast("int"))
    pdf = users.select("user_idx", "segment").orderBy("user_idx").toPandas()
    user_idx = pdf["user_idx"].to_numpy(np.int64)
    segment = pdf["segment"].fillna(-1).to_numpy(np.int64)
    hist = examples.join(users, "user_idx", "left_semi").select("user_idx", "item_idx", "recency").toPandas()
    return ColdUsers(
        user_idx=user_idx,
        segment=np.where(np.isin(segment, segment_ids), np.searchsorted(segment_ids, segment), -1),
        history_owner=np.searchsorted(user_idx, hist["user_idx"].to_numpy(np.int64)),
        history_item=hist["item_idx"].to_numpy(np.int64), history_recency=hist["recency"].to_numpy(np.float32),
    )
