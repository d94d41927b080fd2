"""Training data through Petastorm: a pinned Delta version's active files, sharded per DDP rank.

The trainer never lists a Delta folder itself (removed files would come back): the driver resolves
the active parquet files of one table version and hands that list to every rank.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Iterator

import pyarrow.parquet as pq
import torch
from petastorm import make_batch_reader
from petastorm import reader as petastorm_reader
from petastorm.pytorch import BatchedDataLoader
from petastorm.workers_pool.thread_pool import ThreadPool

if TYPE_CHECKING:  # GPU trainer nodes have no Spark: only the driver-side helper needs it
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class EndOfDataSafeThreadPool(ThreadPool):
    """Petastorm's thread pool with its end-of-epoch race fixed.

    petastorm 0.13.1 reads the per-worker counters before the ventilator's completion flag, so an
    item ventilated between the two reads is lost and a fresh reader can end an epoch with 0 rows.
    Reading the flag first makes the counters final whenever both say "done".
    """

    def all_workers_done(self) -> bool:
        ventilation_over = self._ventilator is None or self._ventilator.completed()
        return ventilation_over and super().all_workers_done()


# petastorm 0.13.1 on pyarrow 14 warns about its own deprecated pyarrow calls on every reader.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
warnings.filterwarnings("ignore", category=ResourceWarning, module=r"petastorm\.")

# make_batch_reader builds its pool from this module-level name; point it at the fixed class.
petastorm_reader.ThreadPool = EndOfDataSafeThreadPool


class ShortEpochError(RuntimeError):
    """An epoch yielded fewer rows than the table holds: training on it would silently skip data."""


def active_files(spark: SparkSession, path: str, version: int) -> list[str]:
    """The parquet files that make up Delta table ``path`` at ``version`` (from its log, via Spark)."""
    files = spark.read.format("delta").option("versionAsOf", version).load(path).inputFiles()
    return sorted(files)


def count_rows(files: list[str]) -> int:
    """Row count from parquet footers, without reading data."""
    return sum(pq.ParquetFile(_local(f)).metadata.num_rows for f in files)


def _local(url: str) -> str:
    return url[len("file:") :].replace("///", "/", 1) if url.startswith("file:") else url


def _as_url(path: str) -> str:
    return path if "://" in path else "file://" + path


def iterate_batches(
    files: list[str],
    batch_size: int,
    columns: list[str],
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    seed: int = 0,
    workers: int = 2,
    shuffle_buffer: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of this rank's shard as dicts of tensors.

    Row groups are reshuffled every epoch (``seed + epoch``; the same on all ranks, so the shards
    stay disjoint and together cover the table).
    """
    urls = [_as_url(_local(f)) for f in files]
    with make_batch_reader(
        urls,
        schema_fields=columns,
        num_epochs=1,
        cur_shard=rank if world_size > 1 else None,
        shard_count=world_size if world_size > 1 else None,
        shuffle_row_groups=True,
        seed=seed + epoch,
        workers_count=workers,
        reader_pool_type="thread",
    ) as reader:
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_buffer)
        yield from loader
