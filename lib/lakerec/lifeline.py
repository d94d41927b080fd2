"""Training ranks exit when the driver that launched them is gone.

A killed driver (an Airflow task timed out, a spark-submit cancelled) would otherwise leave torchrun
and its ranks training on, and a retry's ranks would then race them on the same model folder. The
driver records its pid in ``LAKEREC_LAUNCHER_PID`` before it launches; every rank watches that pid.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)

LAUNCHER_ENV = "LAKEREC_LAUNCHER_PID"
EXIT_CODE = 3


def mark_launcher() -> None:
    """Name this process as the launcher of the ranks it starts (they inherit the environment)."""
    os.environ[LAUNCHER_ENV] = str(os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def exit_with_launcher(poll_seconds: float = 2.0) -> None:
    """Watch the launcher named in ``LAKEREC_LAUNCHER_PID`` (if any) from a daemon thread, and end this
    process at once (exit code 3) when it is gone: nothing of a rank is worth finishing without it."""
    value = os.environ.get(LAUNCHER_ENV)
    if not value or int(value) == os.getpid():  # an in-process rank: its launcher is itself
        return
    pid = int(value)

    def watch() -> None:
        while _alive(pid):
            time.sleep(poll_seconds)
        log.error("the launcher (pid %d) is gone: this rank (pid %d) exits", pid, os.getpid())
        os._exit(EXIT_CODE)

    threading.Thread(target=watch, name="lakerec-lifeline", daemon=True).start()


def placement() -> dict:
    """Where this rank runs (host, pid, working directory: a Spark executor's own under TorchDistributor
    on a cluster), for ``meta.json``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd()}
