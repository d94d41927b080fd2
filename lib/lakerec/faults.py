"""Deterministic fault injection: a process kills itself at a named point, for crash and resume tests.

``LAKEREC_FAULT`` holds comma-separated ``<point>:<index>`` entries, optionally ``@<rank>``:
``train.epoch_end:1@0`` makes DDP rank 0 die by SIGKILL right after epoch 1 ended, its
checkpoint written and every rank past it. Unset (always, in production) it costs one lookup.
SIGKILL, not an exception: nothing gets to clean up, as in a real crash. A driver-side job tested
in the test process itself takes ``=raise`` (``features.write:3=raise``): :class:`InjectedFault`
stops the job at that point, which leaves the tables exactly as a kill there would.

Every Delta write, and every model file a training rank renames into place, counts as ``<job>.write``
(see :func:`job` and :func:`wrote`), so a test can stop a job after its k-th write for every k
without naming the writes.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
from typing import Any, Callable, Optional, TypeVar

log = logging.getLogger(__name__)

FAULT_ENV = "LAKEREC_FAULT"


class InjectedFault(RuntimeError):
    """Raised at an injected ``=raise`` fault point."""


def _matches(entry: str, point: str, index: int, rank: int) -> bool:
    spec, _, only_rank = entry.strip().partition("=")[0].partition("@")
    name, _, at = spec.rpartition(":")
    return name == point and at == str(index) and (not only_rank or only_rank == str(rank))


def inject(point: str, index: int, what: str = "") -> None:
    """Kill this process when ``LAKEREC_FAULT`` names ``point`` at ``index`` (and this rank, if given)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank = int(os.environ.get("RANK", 0))
    for entry in spec.split(","):
        if not _matches(entry, point, index, rank):
            continue
        if entry.strip().endswith("=raise"):
            raise InjectedFault(f"{FAULT_ENV}={spec}: stopped at {point} {index} {what}".rstrip())
        log.warning("%s=%s: killing rank %d at %s %d", FAULT_ENV, spec, rank, point, index)
        os.kill(os.getpid(), signal.SIGKILL)


Job = TypeVar("Job", bound=Callable[..., Any])
_running: dict[str, Any] = {"job": None, "writes": 0}


def job(name: str) -> Callable[[Job], Job]:
    """Decorate a job's ``run``: the writes it makes are counted as ``<name>.write`` 1, 2, ..."""
    def decorate(run: Job) -> Job:
        @functools.wraps(run)
        def counted(*args: Any, **kwargs: Any) -> Any:
            outer = dict(_running)
            _running.update(job=name, writes=0)
            try:
                return run(*args, **kwargs)
            finally:
                _running.update(outer)
        return counted  # type: ignore[return-value]
    return decorate


def wrote(what: str) -> None:
    """Count one committed write (``what``: the table) of the running job: the point ``<job>.write``."""
    name: Optional[str] = _running["job"]
    if name is None:
        return
    _running["writes"] += 1
    inject(f"{name}.write", _running["writes"], what)
