"""Training data through Petastorm: a pinned Delta version's active files, sharded per DDP rank.

The trainer never lists a Delta folder itself (removed files would come back): the driver resolves
the parquet files of one table version and hands that list to every rank. Two ways to get the list:
``active_files`` (the files of the version, from the Delta log) or ``spark_converter`` (Petastorm's
make_spark_converter materialises the version into its cache). Workers read either list the same way.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from typing import TYPE_CHECKING, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lakerec import petastorm_bridge
from lakerec.petastorm_bridge import LocalFileSystem, ParquetDataset, ParquetDatasetPiece

petastorm_bridge.install()  # petastorm 0.13.1 imports pyarrow names that pyarrow 16 removed

from petastorm import arrow_reader_worker, make_batch_reader
from petastorm import pytorch as petastorm_pytorch
from petastorm import reader as petastorm_reader
from petastorm.arrow_reader_worker import ArrowReaderWorker
from petastorm.etl import dataset_metadata
from petastorm.pytorch import BatchedDataLoader
from petastorm.reader_impl.pytorch_shuffling_buffer import BatchedShufflingBufferBase
from petastorm.workers_pool.thread_pool import ThreadPool
from petastorm.workers_pool.ventilator import ConcurrentVentilator

if TYPE_CHECKING:  # GPU trainer nodes have no Spark: only the driver-side helpers need it
    from petastorm.spark import SparkDatasetConverter
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


class PromptVentilator(ConcurrentVentilator):
    """Petastorm's row-group ventilator, looking for room in its queue every 1 ms instead of 10 ms.

    A reader keeps at most 2 row groups per worker in flight, and each time that window is full
    the ventilator sleeps before it looks again; the row group it hands out late leaves a reader
    idle. Measured on 5M examples (8 row groups, 2 readers): median loader rows/s +4-8% over three
    runs (BENCHMARKS.md "Training").
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("ventilation_interval", 0.001)
        super().__init__(*args, **kwargs)


class ZeroCopyBatchBuffer(BatchedShufflingBufferBase):
    """Petastorm's no-shuffle batch buffer without its copy of every row group.

    petastorm 0.13.1's ``BatchedNoopShufflingBuffer`` concatenates each incoming row group onto the
    previous leftover, copying all data once more. This buffer keeps the row groups as they come and
    hands out views; only a batch that spans two row groups is concatenated.
    """

    def __init__(self, batch_size: int = 1) -> None:
        super().__init__(batch_size=batch_size)
        self._chunks: deque[tuple[list[torch.Tensor], int]] = deque()
        self._offset = 0
        self._size = 0
        self._done_adding = False

    def _add_many(self, items: list[torch.Tensor]) -> None:
        rows = items[0].shape[0]
        if rows:
            self._chunks.append((items, rows))
            self._size += rows

    def retrieve(self) -> list[torch.Tensor]:
        wanted = min(self._size, self.batch_size)
        self._size -= wanted
        parts = []
        while wanted:
            chunk, rows = self._chunks[0]
            start = self._offset
            take = min(rows - start, wanted)
            parts.append([column[start : start + take] for column in chunk])
            wanted -= take
            if start + take == rows:
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = start + take
        return parts[0] if len(parts) == 1 else [torch.cat(columns) for columns in zip(*parts)]

    def can_retrieve(self) -> bool:
        return self._size > 0 if self._done_adding else self._size >= self.batch_size

    def can_add(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return self._size

    def finish(self) -> None:
        self._done_adding = True


class MappedLocalFileSystem(LocalFileSystem):
    """Petastorm's local filesystem, opening files for reading as memory maps instead of Python files.

    Through a Python file object every read of a row group waits for the GIL, which the training loop
    (and the loader's consumer) holds most of the time; pyarrow reads a memory map without it. On
    the bench-train files the loader went from 0.82-0.86 to 0.93-0.95 of the raw bound (medians).
    """

    def open(self, path, mode: str = "rb"):
        return pa.memory_map(str(path)) if mode == "rb" else super().open(path, mode)


_table_to_numpy_dict_via_pandas = arrow_reader_worker.convert_arrow_table_to_numpy_dict


def _table_to_numpy_dict(table: pa.Table, schema) -> dict[str, np.ndarray]:
    """A row group's columns as numpy arrays, straight from arrow when all are numbers without nulls.

    petastorm 0.13.1 goes through a pandas Series per column; for such columns the arrays are the
    same (zero-copy views), so only other types and columns with nulls keep its path.
    """
    columns = table.columns
    if all(c.num_chunks == 1 and c.null_count == 0 and (pa.types.is_integer(c.type) or pa.types.is_floating(c.type))
           for c in columns):
        return {name: column.chunk(0).to_numpy() for name, column in zip(table.column_names, columns)}
    return _table_to_numpy_dict_via_pandas(table, schema)


_read_row_group_with_copy = ArrowReaderWorker._read_with_shuffle_row_drop


def _read_row_group(self: ArrowReaderWorker, piece, pq_file, column_names: set, shuffle_row_drop_partition):
    """A row group as read, when rows are neither shuffled nor dropped.

    petastorm 0.13.1 copies every row group through ``table.take(arange(n))`` even then: the copy
    cost a third of the loader's time on the benchmark. Shuffled or partitioned reads keep its path.
    """
    if self._shuffle_rows or shuffle_row_drop_partition[1] > 1:
        return _read_row_group_with_copy(self, piece, pq_file, column_names, shuffle_row_drop_partition)
    partitions = self._dataset.partitions
    table = piece.read(columns=column_names - set(partitions.partition_names if partitions else ()),
                       partitions=partitions)
    unasked = set(table.column_names) - column_names  # partition values pyarrow adds
    return table.drop(unasked) if unasked else table


_row_groups_per_file: dict[str, int] = {}


def _split_row_groups_from_cached_footers(dataset: ParquetDataset) -> list:
    """One piece per row group, like petastorm's footer split, reading each file's footer once per process.

    The trainer builds a fresh reader every epoch (that is what reshuffles the row groups), and
    petastorm 0.13.1 re-reads every footer each time. The files it is given never change: a Delta
    version's data files are immutable, and so are Petastorm's converter cache files.
    """
    pieces = []
    for piece in dataset.pieces:
        if piece.path not in _row_groups_per_file:
            _row_groups_per_file[piece.path] = piece.get_metadata().num_row_groups
        pieces += [ParquetDatasetPiece(piece.path, open_file_func=dataset.fs.open, row_group=group)
                   for group in range(_row_groups_per_file[piece.path])]
    return pieces


def install_petastorm_patches() -> None:
    """Point petastorm 0.13.1 at the fixed classes and functions above; idempotent.

    make_batch_reader builds its pool and ventilator, and BatchedDataLoader its no-shuffle buffer,
    from module-level names, so the fixes go in by rebinding those names. Called by every reader
    this module opens, not at import. (What importing this module does install is
    ``petastorm_bridge``: names petastorm's own modules lost, nothing that changes their behaviour.)
    """
    # petastorm leaves its files to the garbage collector.
    warnings.filterwarnings("ignore", category=ResourceWarning, module=r"petastorm\.")
    # Row groups arrive as read-only numpy arrays; batches are views that the trainer only reads.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    petastorm_reader.ThreadPool = EndOfDataSafeThreadPool
    petastorm_reader.ConcurrentVentilator = PromptVentilator
    petastorm_pytorch.BatchedNoopShufflingBuffer = ZeroCopyBatchBuffer
    ArrowReaderWorker._read_with_shuffle_row_drop = _read_row_group
    arrow_reader_worker.convert_arrow_table_to_numpy_dict = _table_to_numpy_dict
    dataset_metadata._split_row_groups_from_footers = _split_row_groups_from_cached_footers


class ShortEpochError(RuntimeError):
    """An epoch yielded fewer rows than the table holds: training on it would silently skip data."""


def active_files(spark: SparkSession, path: str, version: int) -> list[str]:
    """The parquet files that make up Delta table ``path`` at ``version`` (from its log, via Spark)."""
    files = spark.read.format("delta").option("versionAsOf", version).load(path).inputFiles()
    return sorted(files)


def spark_converter(
    spark: SparkSession, path: str, version: int, columns: list[str], cache_dir: str
) -> SparkDatasetConverter:
    """Petastorm's converter over Delta table ``path`` at ``version``: parquet files under ``cache_dir``.

    The converter caches by query plan, so the same pinned version is materialised once per Spark
    application; ``converter.file_urls`` is a file list that ``iterate_batches`` reads.
    """
    petastorm_bridge.install("petastorm.spark")
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, _as_url(cache_dir))
    df = spark.read.format("delta").option("versionAsOf", version).load(path).select(*columns)
    return make_spark_converter(df)


def count_rows(files: list[str]) -> int:
    """Row count from parquet footers, without reading data."""
    return sum(_parquet_file(f).metadata.num_rows for f in files)


def read_columns(files: list[str], columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` of every row of ``files`` as numpy arrays, with pyarrow (no Spark): e.g. user histories."""
    table = pa.concat_tables([_parquet_file(f).read(columns=columns) for f in files])
    return {c: table.column(c).to_numpy() for c in columns}


def _parquet_file(url: str) -> pq.ParquetFile:
    """A parquet file by local path or URL: local files memory-mapped, other schemes (``s3a://``,
    ``gs://``, ``abfss://``...) through fsspec, as petastorm opens them (needs that scheme's package)."""
    if "://" not in url or url.startswith("file:"):
        return pq.ParquetFile(_local(url), memory_map=True)
    filesystem, path = fsspec.core.url_to_fs(url)
    return pq.ParquetFile(filesystem.open(path, "rb"))


def _local(url: str) -> str:
    return url[len("file:") :].replace("///", "/", 1) if url.startswith("file:") else url


def _as_url(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


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
    install_petastorm_patches()
    urls = [_as_url(_local(f)) for f in files]
    local = all(url.startswith("file://") for url in urls)
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
        filesystem=MappedLocalFileSystem() if local else None,
    ) as reader:
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_buffer)
        yield from loader
