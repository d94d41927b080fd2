"""Delta commit conflicts: an idempotent write that lost to a concurrent writer's commit is run again."""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import delta.exceptions.captured  # noqa: F401  (turns Delta's commit conflicts into the Python classes below)
from delta.exceptions import (ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
                              ConcurrentTransactionException, ConcurrentWriteException,
                              DeltaConcurrentModificationException, MetadataChangedException, ProtocolChangedException)

log = logging.getLogger(__name__)

T = TypeVar("T")
# A commit that lost to a concurrent writer's commit: safe to redo when the write is idempotent.
CONFLICTS = (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
CONFLICT_ATTEMPTS = 5


def retrying(what: str, write: Callable[[], T]) -> T:
    """Run an idempotent ``write``; when a concurrent writer's commit conflicts with it, pause (growing,
    jittered) and run it again, at most :data:`CONFLICT_ATTEMPTS` times, then fail naming the table."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return write()
        except CONFLICTS as exc:
            if attempt == CONFLICT_ATTEMPTS:
                raise RuntimeError(
                    f"{what}: {attempt} attempts lost to concurrent writers ({type(exc).__name__}); "
                    "is another lakerec run writing this warehouse?") from exc
            pause = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
            log.warning("%s: a concurrent commit conflicted (%s); attempt %d of %d in %.1fs",
                        what, type(exc).__name__, attempt + 1, CONFLICT_ATTEMPTS, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")
