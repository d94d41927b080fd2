"""Petastorm 0.13.1 on pyarrow >= 16 and NumPy 2, without changing or copying Petastorm.

Petastorm 0.13.1 calls pyarrow and NumPy names that later releases removed:

* ``pyarrow.filesystem`` and ``pyarrow.hdfs`` (gone in pyarrow 16), imported when petastorm is;
  ``pyarrow.localfs`` and ``pyarrow.LocalFileSystem``, the legacy local filesystem.
* the legacy ``pyarrow.parquet.ParquetDataset`` (``validate_schema=``, ``metadata_nthreads=``,
  ``.pieces``, ``.partitions``, ``.metadata``, ``.common_metadata``, ``.fs``) and
  ``ParquetDatasetPiece`` (``read``, ``get_metadata``), gone in pyarrow 15.
* ``np.unicode_``, ``np.string_``, ``np.float`` and ``np.in1d``, gone in NumPy 2.

``install()`` gives those names back to petastorm's modules only. Petastorm is imported while the
two stand-in modules and the two pyarrow attributes exist, which are removed again afterwards; then
each loaded ``petastorm.*`` module's ``pq``, ``pa``/``pyarrow`` and ``np`` are rebound to proxies of
the real modules that add the legacy names. pyarrow, NumPy and ``sys.modules`` are left as they were.

The legacy dataset here covers what lakerec's reads need: a list of parquet files (a Delta
version's active files, or the Spark converter's cache files) or one file, on the local disk or
an fsspec filesystem. A directory, hive partitions and ``filters=`` fail with a clear error
instead of reading something else.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# What lakerec imports from petastorm; each is rebound by install().
PETASTORM_MODULES = (
    "petastorm",
    "petastorm.reader",
    "petastorm.arrow_reader_worker",
    "petastorm.py_dict_reader_worker",
    "petastorm.etl.dataset_metadata",
    "petastorm.unischema",
    "petastorm.utils",
    "petastorm.fs_utils",
    "petastorm.predicates",
    "petastorm.pytorch",
)


class FileSystem:
    """Base of the legacy filesystems: petastorm only uses it in ``isinstance`` checks."""


class LocalFileSystem(FileSystem):
    """The legacy local filesystem, as far as petastorm calls it: plain OS paths, Python files."""

    _instance: LocalFileSystem | None = None

    @classmethod
    def get_instance(cls) -> LocalFileSystem:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def open(self, path, mode: str = "rb"):
        return open(os.fspath(path), mode)

    def exists(self, path) -> bool:
        return os.path.exists(os.fspath(path))

    def isdir(self, path) -> bool:
        return os.path.isdir(os.fspath(path))


class _HdfsRemoved:
    """``pyarrow.hdfs`` left with pyarrow 16: petastorm's ``hdfs://`` reads through it cannot be bridged."""

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            "pyarrow.hdfs was removed in pyarrow 16, and petastorm reads hdfs:// through it: "
            "give lakerec the files as another scheme (e.g. abfss://, s3a://, gs://) or a mounted path")

    connect = classmethod(lambda cls, *args, **kwargs: cls())


def _module(name: str, doc: str, **names) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__dict__.update(names)
    return module


_FILESYSTEM_MODULE = _module("pyarrow.filesystem", "lakerec.petastorm_bridge: legacy pyarrow.filesystem",
                             FileSystem=FileSystem, LocalFileSystem=LocalFileSystem)
_HDFS_MODULE = _module("pyarrow.hdfs", "lakerec.petastorm_bridge: pyarrow.hdfs, removed",
                       HadoopFileSystem=_HdfsRemoved, connect=_HdfsRemoved.connect)


class ParquetDatasetPiece:
    """One parquet file, or one row group of it (``row_group``), as the legacy API described it."""

    def __init__(self, path, open_file_func: Callable | None = None, file_options: dict | None = None,
                 row_group: int | None = None, partition_keys: list | None = None) -> None:
        if partition_keys:
            raise NotImplementedError("lakerec.petastorm_bridge: hive-partitioned pieces are not bridged")
        self.path = os.fspath(path)
        self.open_file_func = open_file_func or LocalFileSystem.get_instance().open
        self.file_options = file_options or {}
        self.row_group = row_group
        self.partition_keys: list = []

    def __eq__(self, other) -> bool:
        return isinstance(other, ParquetDatasetPiece) and (self.path, self.row_group) == (other.path, other.row_group)

    def __hash__(self) -> int:
        return hash((self.path, self.row_group))

    def __repr__(self) -> str:
        return f"ParquetDatasetPiece({self.path!r}, row_group={self.row_group})"

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.open_file_func(self.path), **self.file_options)

    def get_metadata(self) -> pq.FileMetaData:
        return self.open().metadata

    def read(self, columns=None, use_threads: bool = True, partitions=None) -> pa.Table:
        """The piece's rows (its row group, or the whole file); ``partitions`` is always None here."""
        reader = self.open()
        options = {"columns": None if columns is None else list(columns), "use_threads": use_threads}
        if self.row_group is None:
            return reader.read(**options)
        return reader.read_row_group(self.row_group, **options)


class ParquetDataset:
    """The legacy ``ParquetDataset`` over a list of parquet files or one file.

    Like the legacy one on a file list: one piece per file, no partitions, no ``_metadata``. The
    legacy keywords petastorm passes (``validate_schema``, ``metadata_nthreads``) change nothing.
    """

    def __init__(self, path_or_paths, filesystem=None, metadata=None, split_row_groups: bool = False, filters=None,
                 **_legacy_keywords) -> None:
        if filters:
            raise NotImplementedError("lakerec.petastorm_bridge: ParquetDataset(filters=...) is not bridged")
        if split_row_groups:
            raise NotImplementedError("lakerec.petastorm_bridge: ParquetDataset(split_row_groups=True) is not bridged")
        self.fs = filesystem if filesystem is not None else LocalFileSystem.get_instance()
        self.paths = list(path_or_paths) if isinstance(path_or_paths, (list, tuple)) else os.fspath(path_or_paths)
        paths = self.paths if isinstance(self.paths, list) else [self.paths]
        for path in paths:
            if self.fs.isdir(path):
                raise NotImplementedError(
                    f"lakerec.petastorm_bridge: {path} is a directory; pass its parquet files "
                    "(lakerec.data reads a Delta version's active files)")
        self.pieces = [ParquetDatasetPiece(path, open_file_func=self.fs.open) for path in paths]
        self.partitions = None
        self.metadata = metadata
        self.metadata_path = None
        self.common_metadata = None


class _Proxy(types.ModuleType):
    """A module that adds a few names to another and forwards every other lookup to it."""

    def __init__(self, target: types.ModuleType, **names) -> None:
        super().__init__(target.__name__, f"{target.__name__} with petastorm's legacy names (lakerec.petastorm_bridge)")
        self.__dict__.update(names)
        self._target = target

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def _in1d(ar1, ar2, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


_PARQUET = _Proxy(pq, ParquetDataset=ParquetDataset, ParquetDatasetPiece=ParquetDatasetPiece)
_PYARROW = _Proxy(pa, parquet=_PARQUET, filesystem=_FILESYSTEM_MODULE, hdfs=_HDFS_MODULE,
                  localfs=LocalFileSystem.get_instance(), LocalFileSystem=LocalFileSystem)
_NUMPY = _Proxy(np, unicode_=np.str_, string_=np.bytes_, float=float, in1d=_in1d)
_REBIND = {"pq": (pq, _PARQUET), "pa": (pa, _PYARROW), "pyarrow": (pa, _PYARROW), "np": (np, _NUMPY)}


@contextmanager
def _legacy_names_for_import() -> Iterator[None]:
    """The legacy modules and attributes that petastorm reads at import time, for the import only."""
    saved_modules = {name: sys.modules.get(name) for name in ("pyarrow.filesystem", "pyarrow.hdfs")}
    saved_attrs = {name: pa.__dict__.get(name) for name in ("localfs", "LocalFileSystem")}
    sys.modules.update({"pyarrow.filesystem": _FILESYSTEM_MODULE, "pyarrow.hdfs": _HDFS_MODULE})
    pa.localfs, pa.LocalFileSystem = LocalFileSystem.get_instance(), LocalFileSystem
    try:
        yield
    finally:
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_attrs.items():
            if value is None:
                pa.__dict__.pop(name, None)
            else:
                setattr(pa, name, value)


def install(*modules: str) -> None:
    """Import petastorm's ``PETASTORM_MODULES`` (and ``modules``, e.g. ``petastorm.spark``) on this
    pyarrow and NumPy, and rebind their legacy names; idempotent. Call before importing petastorm."""
    # petastorm compares versions with distutils' LooseVersion, deprecated since Python 3.10.
    warnings.filterwarnings("ignore", message="distutils Version classes", category=DeprecationWarning,
                            module=r"petastorm\.")
    with _legacy_names_for_import():
        for name in PETASTORM_MODULES + modules:
            importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "petastorm" or name.startswith("petastorm.")):
            continue
        for attribute, (real, proxy) in _REBIND.items():
            if module.__dict__.get(attribute) is real:
                setattr(module, attribute, proxy)
