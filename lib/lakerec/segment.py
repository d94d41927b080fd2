"""User segments: k-means on profiles that join what each user does and what it means.

A user's profile has two blocks: their serving-model vector (for a user the model has none for, the
fold-in of their positives' item vectors, as the model's history term builds it) and the
recency-weighted mean text embedding of the items in their history. Each block is z-scored per
dimension and scaled to a total variance of 1, so both weigh the same whatever their widths (64
model dimensions beside 384 MiniLM ones); a user with nothing in a block sits at its mean (zeros).
Spark MLlib ``KMeans`` clusters the profiles; ``k`` is ``segment.k``, or the ``segment.k_grid``
value with the best silhouette. Only the model block is built on the driver: users x model dim floats,
the user factors the scorer already loads there. The text block (users x 384), the profiles, the
clustering and each user's distance stay on the executors.
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

TEXT_SCHEMA = "item_idx int, embedding array<float>"


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


@dataclass(frozen=True)
class Scaling:
    """Per-dimension mean and (population) standard deviation of a block over the users who have it."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def factor(self) -> np.ndarray:
        """Per dimension: 1 / std, over the root of the number of dimensions that vary; 0 where one never varies."""
        varying = self.std > 1e-12
        return np.where(varying, 1.0 / np.where(varying, self.std, 1.0), 0.0) / np.sqrt(max(int(varying.sum()), 1))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` z-scored per dimension and scaled to total variance 1; dimensions that never vary are 0."""
        return (rows - self.mean) * self.factor


def standardised(block: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``block`` z-scored per dimension over the ``present`` rows, scaled to total variance 1; absent rows 0."""
    out = np.zeros(block.shape, np.float64)
    if not present.any() or block.shape[1] == 0:
        return out
    rows = block[present].astype(np.float64)
    out[present] = Scaling(rows.mean(axis=0), rows.std(axis=0)).apply(rows)
    return out


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


def text_block(cfg: Config, history: DataFrame, text: DataFrame, users: DataFrame) -> tuple[DataFrame, int]:
    """((user_idx, meaning), width): each of ``users``' mean text embedding of their items, weight halving every
    ``segment.text_half_life_days`` before their latest event, standardised over the users who have one (the
    others have no row). Computed and scaled on the executors: users x text width never reaches the driver."""
    half_life = cfg.segment.text_half_life_days * SECONDS_PER_DAY
    age = F.max("ts").over(Window.partitionBy("user_idx")) - F.col("ts")
    weighted = history.select("user_idx", "item_idx", F.coalesce(F.pow(F.lit(0.5), age / half_life), F.lit(1.0)).alias("w"))
    means = (
        weighted.join(text.select("item_idx", array_to_vector("embedding").alias("vec")), "item_idx")
        .groupBy("user_idx").agg(Summarizer.mean(F.col("vec"), F.col("w")).alias("mean"))
        .join(users.select("user_idx"), "user_idx", "left_semi")
        .localCheckpoint()  # computed once for its statistics and its rows
    )
    n = means.count()
    if n == 0:  # a summarizer refuses to summarise nothing
        return means.select("user_idx", F.array().cast("array<double>").alias("meaning")), 0
    stats = means.select(Summarizer.metrics("mean", "variance").summary(F.col("mean")).alias("s")).first()["s"]
    population_variance = np.nan_to_num(stats["variance"].toArray()) * (n - 1) / n
    scaling = Scaling(stats["mean"].toArray(), np.sqrt(population_variance))
    scale = means.sparkSession.createDataFrame([(scaling.mean.tolist(), scaling.factor.tolist())],
                                               "shift array<double>, factor array<double>")
    centred = F.zip_with(vector_to_array("mean"), "shift", lambda x, shift: x - shift)
    meaning = means.crossJoin(F.broadcast(scale)).select(
        "user_idx", F.zip_with(centred, "factor", lambda x, factor: x * factor).alias("meaning"))
    return meaning, len(scaling.mean)


def user_profiles(spark: SparkSession, cfg: Config, model: FactorModel, history: DataFrame, text: DataFrame,
                  users: Optional[DataFrame] = None) -> DataFrame:
    """(user_idx, features): every user's profile, the model block then the text block, for ``users``
    (user_idx; by default everyone in ``history``). A user without a text block has zeros there."""
    users = (history if users is None else users).select("user_idx").distinct()
    user_idx = np.sort(users.toPandas()["user_idx"].to_numpy().astype(np.int64))
    behaviour = standardised(*model_block(cfg, model, history, user_idx))
    model_rows = spark.createDataFrame(pd.DataFrame({"user_idx": user_idx.astype(np.int32), "behaviour": list(behaviour)}),
                                       "user_idx int, behaviour array<double>")
    meaning, width = text_block(cfg, history, text, users)
    return model_rows.join(meaning, "user_idx", "left").select(
        "user_idx", array_to_vector(F.concat("behaviour", F.coalesce("meaning", F.array_repeat(F.lit(0.0), width))))
        .alias("features"))


def _fit(frame: DataFrame, cfg: Config, k: int) -> tuple[KMeansModel, DataFrame]:
    model = KMeans(k=k, seed=cfg.segment.seed, maxIter=cfg.segment.max_iter, featuresCol="features").fit(frame)
    return model, model.transform(frame)


def _silhouette(predicted: DataFrame, model: KMeansModel) -> float:
    """Silhouette of one clustering; -1 (the worst) when the users had fewer than two distinct profiles."""
    if len(model.clusterCenters()) < 2:
        return -1.0
    return float(ClusteringEvaluator(featuresCol="features", metricName="silhouette").evaluate(predicted))


def cluster(cfg: Config, profiles: DataFrame, k: Optional[int] = None) -> Segmentation:
    """K-means on ``profiles`` (user_idx, features): ``k``, or (None) the ``segment.k_grid`` value with the best
    silhouette, each capped below the number of users; fewer than 3 users make one segment."""
    frame = profiles.cache()
    try:
        n_users = frame.count()
        if n_users < 3:
            centers = np.zeros((1, 0))
            if n_users:
                centers = np.array([frame.select(Summarizer.mean(F.col("features")).alias("m")).first()["m"].toArray()])
            return _assigned(frame.withColumn("prediction", F.lit(0)), centers, [n_users], None, {})
        grid = [k] if k is not None else cfg.segment.k_grid
        fits = {c: _fit(frame, cfg, c) for c in sorted({min(c, n_users - 1) for c in grid})}
        silhouettes = {c: _silhouette(predicted, model) for c, (model, predicted) in fits.items()}
        best = max(silhouettes, key=lambda c: (silhouettes[c], -c))
        model, predicted = fits[best]
        log.info("segment: silhouette by k %s, chose k=%d", silhouettes, best)
        centers = np.array(model.clusterCenters())
        return _assigned(predicted, centers, model.summary.clusterSizes, silhouettes[best], silhouettes)
    finally:
        frame.unpersist()


def _assigned(predicted: DataFrame, centers: np.ndarray, cluster_sizes: list[int], silhouette: Optional[float],
              silhouettes: dict[int, float]) -> Segmentation:
    """Segments numbered by size (0 the largest), each user's Euclidean distance to their centroid; the
    assignments are checkpointed, so they outlive the cached profiles."""
    sizes = np.array(cluster_sizes)
    order = np.argsort(-sizes, kind="stable")
    renumbered = np.empty_like(order)
    renumbered[order] = np.arange(len(order))
    centroids = predicted.sparkSession.createDataFrame(
        [(c, int(renumbered[c]), centers[c].tolist()) for c in range(len(centers))],
        "prediction int, segment int, centroid array<double>")
    squares = F.zip_with(vector_to_array("features"), "centroid", lambda x, c: (x - c) * (x - c))
    assignments = predicted.join(F.broadcast(centroids), "prediction").select(
        "user_idx", "segment", F.sqrt(F.aggregate(squares, F.lit(0.0), lambda total, x: total + x)).alias("distance"))
    return Segmentation(assignments.localCheckpoint(), len(centers), silhouette, silhouettes,
                        [int(s) for s in sizes[order] if s])


def segment_users(spark: SparkSession, cfg: Config, model: FactorModel, history: DataFrame, text: DataFrame,
                  users: Optional[DataFrame] = None, k: Optional[int] = None) -> Segmentation:
    """Segment ``users`` (default: everyone in ``history``) from ``model``'s vectors and their items' texts.

    ``history``: (user_idx, item_idx, label, ts); ``text``: (item_idx, embedding); ``k``: default ``segment.k``.
    """
    profiles = user_profiles(spark, cfg, model, history, text, users)
    return cluster(cfg, profiles, k if k is not None else cfg.segment.k)


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
