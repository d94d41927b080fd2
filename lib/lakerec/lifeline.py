"""Training ranks exit when the driver that launched them is gone.

A killed driver (an Airflow task timed out, a spark-submit cancelled) would otherwise leave torchrun
and its ranks training on, and a retry's ranks would then race them on the same model folder. The
driver records its pid and start time in ``LAKEREC_LAUNCHER_PID`` before it launches; every rank watches
that process (the start time tells it apart from a later process given the same pid).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psutil

log = logging.getLogger(__name__)

LAUNCHER_ENV = "LAKEREC_LAUNCHER_PID"
EXIT_CODE = 3


def launcher_id(pid: int) -> str:
    """``pid:start_time`` of process ``pid``: what ``LAKEREC_LAUNCHER_PID`` holds."""
    return f"{pid}:{psutil.Process(pid).create_time()}"


def mark_launcher() -> None:
    """Name this process as the launcher of the ranks it starts (they inherit the environment)."""
    os.environ[LAUNCHER_ENV] = launcher_id(os.getpid())


def _alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started``, not a later one given its pid."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def exit_with_launcher(poll_seconds: float = 2.0) -> None:
    """Watch the launcher named in ``LAKEREC_LAUNCHER_PID`` (if any) from a daemon thread, and end this
    process at once (exit code 3) when it is gone: nothing of a rank is worth finishing without it."""
    value = os.environ.get(LAUNCHER_ENV)
    if not value:
        return
    pid_text, started_text = value.split(":")
    pid, started = int(pid_text), float(started_text)
    if pid == os.getpid():  # an in-process rank: its launcher is itself
        return

    def watch() -> None:
        while _alive(pid, started):
            time.sleep(poll_seconds)
        log.error("the launcher (pid %d) is gone: this rank (pid %d) exits", pid, os.getpid())
        os._exit(EXIT_CODE)

    threading.Thread(target=watch, name="lakerec-lifeline", daemon=True).start()


def placement() -> dict:
    """Where this rank runs (host, pid, working directory: a Spark executor's own under TorchDistributor
    on a cluster), for ``meta.json``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": os.getcwd()}
