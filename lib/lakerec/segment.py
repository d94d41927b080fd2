"""User segments: k-means on profiles that join what each user does and what it means.

A user's profile has two blocks: their serving-model vector (for a user the model has none for, the
fold-in of their positives' item vectors, as the model's history term builds it) and the
recency-weighted mean text embedding of the items in their history. Each block is z-scored per
dimension and scaled to a total variance of 1, so both weigh the same whatever their widths (64
model dimensions beside 384 MiniLM ones); a user with nothing in a block sits at its mean (zeros).
Spark MLlib ``KMeans`` clusters the profiles; ``k`` is ``segment.k``, or the ``segment.k_grid``
value with the best silhouette. The profile matrix is assembled on the driver: users x (model dim +
text dim) floats, the order of the user factors the scorer already loads there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import coldstart, embed, faults, snapshot, tables
from lakerec.config import Config
from lakerec.features import SECONDS_PER_DAY
from lakerec.model_store import FACTORS_FILE, SERVING, resolved_train
from lakerec.models import FactorModel
from lakerec.snapshot import Snapshot, checked_ds

log = logging.getLogger(__name__)

ASSIGNMENT_SCHEMA = "user_idx int, segment int, distance double"
TEXT_SCHEMA = "item_idx int, embedding array<float>"


@dataclass(frozen=True)
class Profiles:
    """One row per user (``user_idx`` ascending): the model block, then the text block, both standardised."""

    user_idx: np.ndarray
    matrix: np.ndarray


@dataclass(frozen=True)
class Segmentation:
    """What :func:`segment_users` found: each user's segment (0 the largest) and distance to its centroid."""

    assignments: DataFrame  # user_idx, segment, distance
    k: int
    silhouette: Optional[float]
    silhouettes: dict[int, float]  # every k tried
    sizes: list[int]


@dataclass(frozen=True)
class NightInputs:
    """What a night's segmentation reads: the serving model, all history, item texts, users, items."""

    model: FactorModel
    history: DataFrame  # silver/interactions, all splits
    text: DataFrame  # item_idx, embedding
    users: DataFrame  # user_idx, user_key: every user of the night
    items: DataFrame  # item_idx, item_key, genres, title


def standardised(block: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``block`` z-scored per dimension over the ``present`` rows, scaled to total variance 1; absent rows 0."""
    out = np.zeros(block.shape, np.float64)
    if not present.any() or block.shape[1] == 0:
        return out
    rows = block[present].astype(np.float64)
    std = rows.std(axis=0)
    varying = std > 1e-12
    out[present] = np.where(varying, (rows - rows.mean(axis=0)) / np.where(varying, std, 1.0), 0.0)
    return out / np.sqrt(max(int(varying.sum()), 1))


def _positions(users: np.ndarray, user_idx: np.ndarray) -> np.ndarray:
    """Row of each ``user_idx`` in the sorted ``users``."""
    return np.searchsorted(users, user_idx)


def model_block(cfg: Config, model: FactorModel, history: DataFrame, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, present): the model's vector of each user it has one for, else the fold-in of their positives."""
    n_rows, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    by_user = Window.partitionBy("user_idx")
    position = F.row_number().over(by_user.orderBy(F.col("ts").asc_nulls_first(), "item_idx")) - 1
    n = F.count(F.lit(1)).over(by_user)
    recency = F.when(F.max("ts").over(by_user).isNull() | (n == 1), F.lit(1.0)).otherwise(position / (n - 1))
    positives = history.where(F.col("label") > 0).select("user_idx", "item_idx", recency.alias("recency"))
    has_positives = positives.select("user_idx").distinct().toPandas()["user_idx"].to_numpy()
    warm = np.intersect1d(users, has_positives[has_positives < n_rows])
    vectors = np.zeros((len(users), model.user_factors.shape[1]), np.float32)
    present = np.zeros(len(users), bool)
    vectors[_positions(users, warm)] = model.user_factors[warm]
    present[_positions(users, warm)] = True

    # Every user with positives and a model row is warm, so the cold ones with positives are past its rows.
    rows = positives.where((F.col("user_idx") >= n_rows) & (F.col("item_idx") < n_items)).toPandas()
    rows = rows[np.isin(rows["user_idx"].to_numpy(), users)]
    if len(rows):
        cold_users, owners = np.unique(rows["user_idx"].to_numpy(), return_inverse=True)
        weights = coldstart.history_weights(rows["recency"].to_numpy(), resolved_train(cfg).history_decay or 0.0)
        folded = coldstart.fold_in(model.item_factors, owners, rows["item_idx"].to_numpy(), weights, len(cold_users))
        vectors[_positions(users, cold_users)] = folded
        present[_positions(users, cold_users)] = True
    return vectors, present


def text_block(cfg: Config, history: DataFrame, text: DataFrame, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, present): each user's mean text embedding of their items, weight halving every
    ``segment.text_half_life_days`` before their latest event; width 0 when none of their items has a text."""
    half_life = cfg.segment.text_half_life_days * SECONDS_PER_DAY
    age = F.max("ts").over(Window.partitionBy("user_idx")) - F.col("ts")
    weighted = history.select("user_idx", "item_idx", F.coalesce(F.pow(F.lit(0.5), age / half_life), F.lit(1.0)).alias("w"))
    means = (
        weighted.join(text.select("item_idx", array_to_vector("embedding").alias("vec")), "item_idx")
        .groupBy("user_idx").agg(Summarizer.mean(F.col("vec"), F.col("w")).alias("mean"))
        .select("user_idx", vector_to_array("mean").alias("mean")).toPandas()
    )
    means = means[np.isin(means["user_idx"].to_numpy(), users)]
    dim = len(means["mean"].iloc[0]) if len(means) else 0
    vectors, present = np.zeros((len(users), dim), np.float32), np.zeros(len(users), bool)
    rows = _positions(users, means["user_idx"].to_numpy())
    vectors[rows] = np.stack(means["mean"].to_numpy()) if len(means) else 0.0
    present[rows] = True
    return vectors, present


def user_profiles(cfg: Config, model: FactorModel, history: DataFrame, text: DataFrame,
                  users: Optional[DataFrame] = None) -> Profiles:
    """Every user's profile: ``users`` (user_idx), by default everyone in ``history``."""
    users = history if users is None else users
    user_idx = np.sort(users.select("user_idx").distinct().toPandas()["user_idx"].to_numpy().astype(np.int64))
    behaviour = standardised(*model_block(cfg, model, history, user_idx))
    meaning = standardised(*text_block(cfg, history, text, user_idx))
    return Profiles(user_idx, np.hstack([behaviour, meaning]))


def _fit(frame: DataFrame, cfg: Config, k: int) -> tuple[KMeansModel, DataFrame]:
    model = KMeans(k=k, seed=cfg.segment.seed, maxIter=cfg.segment.max_iter, featuresCol="features").fit(frame)
    return model, model.transform(frame)


def _silhouette(predicted: DataFrame, model: KMeansModel) -> float:
    """Silhouette of one clustering; -1 (the worst) when the users had fewer than two distinct profiles."""
    if len(model.clusterCenters()) < 2:
        return -1.0
    return float(ClusteringEvaluator(featuresCol="features", metricName="silhouette").evaluate(predicted))


def cluster(spark: SparkSession, cfg: Config, profiles: Profiles, k: Optional[int] = None) -> Segmentation:
    """K-means on ``profiles``: ``k``, or (None) the ``segment.k_grid`` value with the best silhouette,
    each capped below the number of users; fewer than 3 users make one segment."""
    n_users = len(profiles.user_idx)
    if n_users < 3:
        labels = np.zeros(n_users, np.int64)
        centers = profiles.matrix.mean(axis=0, keepdims=True) if n_users else np.zeros((1, profiles.matrix.shape[1]))
        return _assigned(spark, profiles, labels, centers, None, {})
    pdf = pd.DataFrame({"user_idx": profiles.user_idx.astype(np.int32), "features": list(profiles.matrix)})
    frame = spark.createDataFrame(pdf).select("user_idx", array_to_vector("features").alias("features")).cache()
    try:
        grid = [k] if k is not None else cfg.segment.k_grid
        fits = {c: _fit(frame, cfg, c) for c in sorted({min(c, n_users - 1) for c in grid})}
        silhouettes = {c: _silhouette(predicted, model) for c, (model, predicted) in fits.items()}
        best = max(silhouettes, key=lambda c: (silhouettes[c], -c))
        model, predicted = fits[best]
        labels = predicted.select("user_idx", "prediction").toPandas().sort_values("user_idx")["prediction"].to_numpy()
    finally:
        frame.unpersist()
    log.info("segment: silhouette by k %s, chose k=%d", silhouettes, best)
    return _assigned(spark, profiles, labels, np.array(model.clusterCenters()), silhouettes[best], silhouettes)


def _assigned(spark: SparkSession, profiles: Profiles, labels: np.ndarray, centers: np.ndarray,
              silhouette: Optional[float], silhouettes: dict[int, float]) -> Segmentation:
    """Segments numbered by size (0 the largest), each user's Euclidean distance to their centroid."""
    sizes = np.bincount(labels, minlength=len(centers))
    order = np.argsort(-sizes, kind="stable")
    renumbered = np.empty_like(order)
    renumbered[order] = np.arange(len(order))
    distance = np.linalg.norm(profiles.matrix - centers[labels], axis=1) if len(labels) else np.zeros(0)
    pdf = pd.DataFrame({"user_idx": profiles.user_idx.astype(np.int32),
                        "segment": renumbered[labels].astype(np.int32), "distance": distance.astype(np.float64)})
    assignments = spark.createDataFrame(pdf, ASSIGNMENT_SCHEMA)
    return Segmentation(assignments, len(centers), silhouette, silhouettes, [int(s) for s in sizes[order] if s])


def segment_users(spark: SparkSession, cfg: Config, model: FactorModel, history: DataFrame, text: DataFrame,
                  users: Optional[DataFrame] = None, k: Optional[int] = None) -> Segmentation:
    """Segment ``users`` (default: everyone in ``history``) from ``model``'s vectors and their items' texts.

    ``history``: (user_idx, item_idx, label, ts); ``text``: (item_idx, embedding); ``k``: default ``segment.k``.
    """
    profiles = user_profiles(cfg, model, history, text, users)
    return cluster(spark, cfg, profiles, k if k is not None else cfg.segment.k)


def _top(counts: DataFrame, n: int, *fields: str) -> DataFrame:
    """(segment, top): per segment the ``n`` rows of ``counts`` with the most ``count``, as structs of ``fields``."""
    rank = F.row_number().over(Window.partitionBy("segment").orderBy(F.desc("count"), *fields))
    ranked = counts.withColumn("rank", rank).where(F.col("rank") <= n)
    return ranked.groupBy("segment").agg(F.sort_array(F.collect_list(F.struct("rank", *fields))).alias("top"))


def genre_counts(assignments: DataFrame, history: DataFrame, items: DataFrame) -> DataFrame:
    """(segment, genre, count): positives of each segment's members per genre of the item."""
    positives = history.where(F.col("label") > 0).join(assignments.select("user_idx", "segment"), "user_idx")
    genres = positives.join(items.select("item_idx", F.explode("genres").alias("genre")), "item_idx")
    return genres.groupBy("segment", "genre").count()


def segment_profiles(assignments: DataFrame, history: DataFrame, items: DataFrame, n: int) -> DataFrame:
    """Per segment: size, top ``n`` genres and items (by members' positives), the top items' titles,
    mean interactions per member. ``items``: (item_idx, item_key, genres, title)."""
    members = assignments.select("user_idx", "segment")
    activity = history.groupBy("user_idx").agg(F.count("*").alias("n"))
    sizes = members.join(activity, "user_idx", "left").groupBy("segment").agg(
        F.count("*").alias("size"), F.avg(F.coalesce("n", F.lit(0))).cast("double").alias("mean_activity"))
    positives = history.where(F.col("label") > 0).join(members, "user_idx")
    item_counts = positives.join(items.select("item_idx", "item_key", "title"), "item_idx").groupBy(
        "segment", "item_key", "title").count()
    top_items = _top(item_counts, n, "item_key", "title").select(
        "segment", F.col("top.item_key").alias("top_items"),
        F.filter(F.col("top.title"), lambda t: t.isNotNull()).alias("titles"))
    top_genres = _top(genre_counts(assignments, history, items), n, "genre").select(
        "segment", F.col("top.genre").alias("top_genres"))
    empty = F.array().cast("array<string>")
    return sizes.join(top_items, "segment", "left").join(top_genres, "segment", "left").select(
        "segment", "size", *(F.coalesce(c, empty).alias(c) for c in ("top_genres", "top_items", "titles")),
        "mean_activity")


def night_inputs(spark: SparkSession, cfg: Config, snap: Snapshot, model_dir: Path) -> NightInputs:
    """A night's segmentation inputs, as of its snapshot (item texts: :func:`embed.embeddings_by`)."""
    id_map = snap.read(spark, cfg, tables.ID_MAP_ITEMS).select(F.col("key").alias("item_key"), F.col("idx").alias("item_idx"))
    text = spark.createDataFrame([], TEXT_SCHEMA)
    embedded = embed.embeddings_by(spark, cfg, snap.ds)
    if embedded is not None:
        text = embedded.join(id_map, "item_key").select("item_idx", "embedding")
    items = snap.read(spark, cfg, tables.ITEM_FEATURES).select("item_idx", "item_key", "genres")
    if tables.exists(spark, cfg, tables.BRONZE_ITEMS):
        titles = snapshot.arrived_by(tables.read(spark, cfg, tables.BRONZE_ITEMS), snap.ds).select("item_key", "title")
        items = items.join(titles, "item_key", "left")
    else:
        items = items.withColumn("title", F.lit(None).cast("string"))
    return NightInputs(
        FactorModel.load(model_dir / FACTORS_FILE), snap.read(spark, cfg, tables.SILVER_INTERACTIONS), text,
        snap.read(spark, cfg, tables.USER_FEATURES).select("user_idx", "user_key"), items,
    )


@faults.job("segment")
def run(spark: SparkSession, cfg: Config, ds: str, model_dir: Optional[Path] = None) -> dict:
    """Segment every user of ``ds`` with that night's serving model; replace ``ds``'s segments and profiles."""
    if not cfg.segment.enabled:
        log.info("segment %s: segment.enabled is false, nothing written", ds)
        return {"ds": ds, "enabled": False}
    snap = Snapshot.load(spark, cfg, ds)
    night = night_inputs(spark, cfg, snap, model_dir or snap.model_dir(cfg, SERVING))
    result = segment_users(spark, cfg, night.model, night.history, night.text, night.users)
    night_ds = F.lit(checked_ds(ds)).alias("ds")
    segments = result.assignments.join(night.users, "user_idx").select(night_ds, "user_key", "user_idx", "segment", "distance")
    tables.replace_where(segments, cfg, tables.USER_SEGMENTS, tables.equals(ds=ds))
    profiles = segment_profiles(result.assignments, night.history, night.items, cfg.segment.profile_items)
    tables.replace_where(profiles.select(night_ds, "*"), cfg, tables.SEGMENT_PROFILES, tables.equals(ds=ds))
    summary = {"ds": ds, "enabled": True, "k": result.k, "silhouette": result.silhouette,
               "silhouettes": result.silhouettes, "sizes": result.sizes}
    log.info("segment %s: %s", ds, summary)
    return summary
