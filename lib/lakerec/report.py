"""The nightly report: Markdown with PNG plots under ``<reports_dir>/<ds>/``.

The served lists night over night (next-day hit rate beside popularity), the backtest beside the
baselines with metric@K and training curves (on nights it runs), the popularity bias of the
published recommendations (share of slots per item-popularity decile), and the night's user segments.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API draws to files without a display or pyplot state
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakerec import segment, tables
from lakerec.config import Config, resolve_path
from lakerec.feedback import SERVED, SERVED_POPULARITY
from lakerec.model_store import BACKTEST, META_FILE, SERVING
from lakerec.snapshot import Snapshot

log = logging.getLogger(__name__)

CURVE_METRICS = ("ndcg", "recall", "precision")
PROJECTED_USERS = 2000  # users drawn for the 2-D projection of the segment profiles


def format_table(rows: list[dict]) -> str:
    """A small text table: one line per (metric, k), one column per model; '-' where a model has no value."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["metric"], r["k"]) for r in rows))
    value = {(r["model"], r["metric"], r["k"]): r["value"] for r in rows}
    lines = [f"{'metric':<14}" + "".join(f"{m:>12}" for m in models)]
    for metric, k in keys:
        label = f"{metric}@{k}" if k else metric
        cells = (f"{value[(m, metric, k)]:>12.4f}" if (m, metric, k) in value else f"{'-':>12}" for m in models)
        lines.append(f"{label:<14}" + "".join(cells))
    return "\n".join(lines)


def popularity_bias(spark: SparkSession, cfg: Config, ds: str) -> list[float]:
    """Share of the published recommendation slots per train-popularity decile (0 = least popular)."""
    items = Snapshot.load(spark, cfg, ds).read(spark, cfg, tables.ITEM_FEATURES).select("item_key", "popularity")
    deciles = items.withColumn("decile", F.ntile(10).over(Window.orderBy("popularity", "item_key")) - 1)
    recs = tables.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("ds") == ds).select("item_key")
    counts = {r["decile"]: r["count"] for r in recs.join(deciles, "item_key").groupBy("decile").count().collect()}
    total = sum(counts.values()) or 1
    return [counts.get(d, 0) / total for d in range(10)]


def _plot_curves(rows: list[dict], path: Path) -> None:
    fig = Figure(figsize=(4 * len(CURVE_METRICS), 3.2))
    axes = fig.subplots(1, len(CURVE_METRICS))
    for ax, metric in zip(axes, CURVE_METRICS):
        for model in dict.fromkeys(r["model"] for r in rows):
            points = sorted((r["k"], r["value"]) for r in rows if r["model"] == model and r["metric"] == metric)
            if points:
                ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=model)
        ax.set_title(f"{metric}@K")
        ax.set_xlabel("K")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_training(history: list[dict], path: Path) -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], marker="o", label="train BPR loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("val_ndcg" in h for h in history):
        val = ax.twinx()
        val.plot(epochs, [h.get("val_ndcg") for h in history], color="tab:orange", marker="s", label="validation ndcg@10")
        val.set_ylabel("validation ndcg@10")
    ax.set_title("training")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_bias(shares: list[float], path: Path) -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.bar(range(10), shares)
    ax.axhline(0.1, color="grey", linestyle="--", label="uniform")
    ax.set_xlabel("item popularity decile (9 = most popular)")
    ax.set_ylabel("share of recommendation slots")
    ax.set_title("popularity bias")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def served_history(spark: SparkSession, cfg: Config, ds: str) -> list[dict]:
    """Feedback rows of every night up to ``ds`` (served lists and their popularity counterfactual)."""
    if not tables.exists(spark, cfg, tables.METRICS):
        return []
    rows = tables.read(spark, cfg, tables.METRICS).where(
        (F.col("ds") <= ds) & F.col("model").isin(SERVED, SERVED_POPULARITY)).orderBy("ds").collect()
    return [r.asDict() for r in rows]


def _plot_served(history: list[dict], path: Path) -> None:
    """Hit rate of the served lists and of popularity, night over night, at the smallest k."""
    k = min(r["k"] for r in history if r["k"] > 0)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    for model in (SERVED, SERVED_POPULARITY):
        points = [(r["ds"], r["value"]) for r in history if r["model"] == model and r["metric"] == "hit_rate" and r["k"] == k]
        ax.plot([d for d, _ in points], [v for _, v in points], marker="o", label=model)
    ax.set_title(f"next-day hit rate@{k} of the served lists")
    ax.set_xlabel("night (ds)")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _served_section(spark: SparkSession, cfg: Config, ds: str, out: Path) -> list[str]:
    history = served_history(spark, cfg, ds)
    if not history:
        return ["## The served lists, night over night", "", "No feedback yet: it starts on the second night.", ""]
    _plot_served(history, out / "served.png")
    tonight = [r for r in history if r["ds"] == ds]
    return [
        "## The served lists, night over night",
        "",
        "Last night's lists against what returning users did since, beside the popularity list they would have had.",
        "",
        "```",
        format_table(tonight) if tonight else f"(no feedback rows for {ds})",
        "```",
        "",
        "![served](served.png)",
        "",
    ]


def _backtest_section(metrics: list[dict], model_dirs: dict[str, Path], out: Path) -> list[str]:
    backtest = [r for r in metrics if r["model"] not in (SERVED, SERVED_POPULARITY)]
    if BACKTEST not in model_dirs or not backtest:
        return ["## Backtest", "", "Not due tonight (`nightly.backtest_every`).", ""]
    meta = json.loads((model_dirs[BACKTEST] / META_FILE).read_text())
    _plot_curves(backtest, out / "metrics_at_k.png")
    _plot_training(meta["history"], out / "training.png")
    return [
        "## Backtest: the recipe beside the baselines",
        "",
        f"Model `{meta['model_version']}` ({meta['train']['model']}, trained on "
        f"`features.training_examples` version {meta['table_version']}, {len(meta['history'])} epochs, "
        f"world size {meta['world_size']}). Test split, full ranking over items unseen in training.",
        "",
        "```",
        format_table(backtest),
        "```",
        "",
        "![metric@K](metrics_at_k.png)",
        "",
        "![training](training.png)",
        "",
    ]


def _plot_projection(profiles: DataFrame, members: DataFrame, path: Path) -> None:
    """The first two principal components of a sample of the profiles (a fixed hash of user_idx picks it),
    coloured by segment."""
    sample = (profiles.join(members, "user_idx", "left").orderBy(F.xxhash64("user_idx"), "user_idx")
              .limit(PROJECTED_USERS).select(vector_to_array("features").alias("features"), "segment").toPandas())
    matrix = np.stack(sample["features"].to_numpy()) if len(sample) else np.zeros((0, 2))
    centred = matrix - matrix.mean(axis=0) if len(matrix) else matrix
    _, _, axes_t = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes_t[:2].T if len(axes_t) >= 2 else np.zeros((len(centred), 2))
    colours = sample["segment"].fillna(-1).astype(int).tolist()
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    scatter = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab20", s=10)
    ax.legend(*scatter.legend_elements(), title="segment", fontsize="small")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("user profiles (PCA)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _plot_genres(counts: list[dict], profiles: list, path: Path) -> None:
    """Share of each segment's positives per genre, for the genres at the top of any segment."""
    totals: dict[int, int] = {}
    for r in counts:
        totals[r["segment"]] = totals.get(r["segment"], 0) + r["count"]
    share = {(r["segment"], r["genre"]): r["count"] / totals[r["segment"]] for r in counts}
    segments = [r["segment"] for r in profiles]
    genres = sorted({g for r in profiles for g in r["top_genres"][:5]})
    grid = np.array([[share.get((s, g), 0.0) for g in genres] for s in segments])
    fig = Figure(figsize=(max(5, 0.45 * len(genres) + 2), 0.4 * len(segments) + 2))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(genres)), genres, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(len(segments)), [str(s) for s in segments])
    ax.set_ylabel("segment")
    ax.set_title("top genres per segment (share of positives)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _segments_section(spark: SparkSession, cfg: Config, ds: str, serving: Path, out: Path) -> list[str]:
    """Segment sizes, the profiles projected to 2-D, top genres per segment and the profile table."""
    rows = []
    if tables.exists(spark, cfg, tables.SEGMENT_PROFILES):
        rows = tables.read(spark, cfg, tables.SEGMENT_PROFILES).where(F.col("ds") == ds).orderBy("segment").collect()
    if not rows:
        return ["## Segments", "", f"No segments for {ds} (`segment.enabled` is off, or the segment job has not run).", ""]
    members = tables.read(spark, cfg, tables.USER_SEGMENTS).where(F.col("ds") == ds).select("user_idx", "segment")
    night = segment.night_inputs(spark, cfg, Snapshot.load(spark, cfg, ds), serving)
    profiles = segment.user_profiles(spark, cfg, night.model, night.history, night.text, night.users)
    _plot_projection(profiles, members, out / "segments.png")
    genres = any(r["top_genres"] for r in rows)
    if genres:
        counts = segment.genre_counts(members, night.history, night.items).collect()
        _plot_genres([r.asDict() for r in counts], rows, out / "segment_genres.png")
    table = ["| segment | size | mean activity | top genres | top titles |", "|---|---|---|---|---|"]
    table += [f"| {r['segment']} | {r['size']} | {r['mean_activity']:.1f} | {', '.join(r['top_genres'][:5])} | "
              f"{'; '.join(r['titles'][:3]).replace('|', '/')} |" for r in rows]
    return [
        "## Segments",
        "",
        f"{len(rows)} segments of users by k-means on their profiles (serving-model vector + text of their items); "
        "sizes " + ", ".join(str(r["size"]) for r in rows) + ".",
        "",
        *table,
        "",
        "![segments](segments.png)",
        "",
        *(["![segment genres](segment_genres.png)", ""] if genres else []),
    ]


def write(spark: SparkSession, cfg: Config, ds: str, metrics: list[dict], model_dirs: dict[str, Path]) -> Path:
    """Write ``report.md`` and its plots for ``ds``; returns the report's path.

    ``model_dirs`` holds the night's models by role (the backtest one only when it was due).
    """
    out = Path(resolve_path(cfg.reports_dir)) / ds
    out.mkdir(parents=True, exist_ok=True)
    shares = popularity_bias(spark, cfg, ds)
    _plot_bias(shares, out / "popularity_bias.png")
    lines = [
        f"# lakerec nightly report, ds={ds}",
        "",
        f"Served by `{model_dirs[SERVING].name}`.",
        "",
        *_served_section(spark, cfg, ds, out),
        *_backtest_section(metrics, model_dirs, out),
        "## Popularity bias of the published recommendations",
        "",
        "Share of recommendation slots per item-popularity decile (train counts); 10% each would be no bias. "
        f"Top decile: {shares[9]:.0%}, bottom half: {sum(shares[:5]):.0%}.",
        "",
        "![popularity bias](popularity_bias.png)",
        "",
        *_segments_section(spark, cfg, ds, model_dirs[SERVING], out),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    log.info("report %s: %s", ds, path)
    return path
