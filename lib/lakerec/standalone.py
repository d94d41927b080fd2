"""A Spark standalone cluster on this machine, and the nightly pipeline submitted to it (``make run-cluster``).

The master and workers are pyspark's own (``bin/spark-class``), listen on 127.0.0.1 only, and are
stopped whatever happens. Every job goes through spark-submit in client mode against the master,
with the built wheel as ``--py-files`` and the config packaged in it, from a working directory
outside the checkout; the train job's TorchDistributor runs the DDP ranks as barrier tasks on the
executors. With ``--airflow PYTHON`` the jobs are not submitted from here: the DAG does it, in one
whole run in a real Airflow 3 (``tests/airflow/run_dag.py`` under that interpreter), so one night
checks both (CI's ``make test-e2e``). The last line sums the run up:

    cluster run ok master=spark://127.0.0.1:<port> executors=E train_ranks_on_executors=R recommendations=N
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import psutil
import yaml

from lakerec.cli import setup_logging
from lakerec.config import REPO_ROOT, load_config
from lakerec.pipeline import STAGES

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
RESULT = re.compile(r"lakerec (\w+) result: (?=[{[])")
AIRFLOW_RUNNER = REPO_ROOT / "tests" / "airflow" / "run_dag.py"


@dataclass
class Cluster:
    """A running standalone cluster: its master URL, the master's web UI, each worker's work dir."""

    master: str
    ui: str
    work_dirs: list[Path]
    processes: list[subprocess.Popen]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def spark_class() -> Path:
    """pyspark's own launcher of Spark's JVM classes: nothing else to download."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def loopback_env() -> dict[str, str]:
    """Every Spark process of the run binds its RPC, block manager and web UI to 127.0.0.1."""
    return {**os.environ, "SPARK_LOCAL_IP": LOOPBACK, "SPARK_LOCAL_HOSTNAME": "localhost",
            "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:  # not listening yet
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def master_state(ui: str) -> dict:
    with urllib.request.urlopen(f"{ui}/json/", timeout=5) as response:
        return json.loads(response.read())


def listening(processes: list[subprocess.Popen]) -> set[tuple[str, int]]:
    """Every (address, port) that the given processes and their children listen on."""
    found = set()
    for proc in processes:
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in member.net_connections("inet")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    """End each process's whole group (a worker's executors and their Python workers with it)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in processes:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        for proc in processes:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        if all(proc.poll() is not None for proc in processes):
            return


@contextmanager
def standalone(root: Path, workers: int = 2, cores: int = 1, memory: str = "3g") -> Iterator[Cluster]:
    """Start a master and ``workers`` workers on 127.0.0.1 (logs and work dirs under ``root``); stop them on exit."""
    root.mkdir(parents=True, exist_ok=True)
    env = loopback_env()
    port, ui_port = free_port(), free_port()
    master, ui = f"spark://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{ui_port}"
    processes: list[subprocess.Popen] = []

    def launch(name: str, *args: str) -> None:
        with open(root / f"{name}.log", "wb") as out:
            processes.append(subprocess.Popen([str(spark_class()), *args], env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True))

    try:
        launch("master", "org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port),
               "--webui-port", str(ui_port))
        wait_for(lambda: master_state(ui)["status"] == "ALIVE", f"Spark master {master} (log {root / 'master.log'})")
        work_dirs = [root / f"worker-{i}" for i in range(workers)]
        for i, work_dir in enumerate(work_dirs):
            launch(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK,
                   "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                   "--work-dir", str(work_dir), master)
        wait_for(lambda: master_state(ui)["aliveworkers"] == workers, f"{workers} workers registered with {master}")
        exposed = {(ip, p) for ip, p in listening(processes) if not is_loopback(ip)}
        if exposed:
            raise RuntimeError(f"the cluster listens beyond {LOOPBACK}: {sorted(exposed)}")
        log.info("standalone cluster up: %s, %d workers x %d cores, UI %s", master, workers, cores, ui)
        yield Cluster(master, ui, work_dirs, processes)
    finally:
        stop(processes)
        log.info("standalone cluster stopped")


def run_config(root: Path, source: Path) -> Path:
    """The run's own config layer: every path absolute (executors and drivers run elsewhere), and the
    master left to spark-submit."""
    path = root / "cluster-run.yaml"
    path.write_text(yaml.safe_dump({
        "warehouse": str(root / "warehouse"), "models_dir": str(root / "models"),
        "reports_dir": str(root / "reports"), "source": {"path": str(source)},
        "spark": {"master": "", "conf": {"spark.local.dir": str(root / "spark-tmp")}},
        "train": {"petastorm_cache_dir": str(root / "petastorm_cache"), "ranks_on": "executors"},
    }))
    return path


def submit_args(cluster: Cluster, wheel: Path, env: str, conf: Path, overrides: Sequence[str],
                executors: int) -> list[str]:
    """spark-submit's options for every job of the run: the master, Delta's jars, the wheel, executor sizes."""
    cfg = load_config(env, str(conf), list(overrides))
    jars = (["--jars", ",".join(cfg.spark.delta_jars)] if cfg.spark.delta_jars
            else ["--packages", cfg.spark.delta_package])
    return ["--master", cluster.master, "--deploy-mode", "client", *jars,
            "--py-files", str(wheel), "--driver-memory", cfg.spark.driver_memory,
            "--conf", "spark.executor.cores=1", "--conf", f"spark.cores.max={executors}",
            "--conf", "spark.executor.memory=2g", "--conf", "spark.ui.enabled=false"]


def submit_command(args: Sequence[str], stage: str, ds: str, env: str, conf: Path,
                   overrides: Sequence[str]) -> list[str]:
    spark_submit = spark_class().parent / "spark-submit"
    return [str(spark_submit), *args, str(REPO_ROOT / "jobs" / f"{stage}.py"), "--ds", ds, "--env", env,
            "--conf", str(conf), *[arg for o in overrides for arg in ("--set", o)]]


def driver_sources(text: str) -> list[str]:
    """Where each driver in a log imported lakerec from (the ``lakerec <version> from <path>`` line of a job)."""
    return re.findall(r"lakerec \S+ from (\S+)", text)


def stage_results(text: str) -> dict:
    """Each stage's result, from the ``lakerec <stage> result: {...}`` lines of a log (plain or Airflow's)."""
    decoder = json.JSONDecoder()
    return {m.group(1): decoder.raw_decode(text, m.end())[0] for m in RESULT.finditer(text)}


def submit(cmd: list[str], stage: str, cwd: Path, log_path: Path, timeout: float) -> dict:
    """Run one spark-submit; returns the stage's result, as the job logged it. A failure raises with the log's tail."""
    started = time.time()
    with open(log_path, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=loopback_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"spark-submit {stage} failed (exit {proc.returncode}); log {log_path}:\n" + text[-4000:])
    if ".whl" not in "".join(driver_sources(text)):
        raise RuntimeError(f"{stage}: the driver did not run lakerec from the wheel; log {log_path}")
    log.info("%s finished on the cluster in %.0fs", stage, time.time() - started)
    return stage_results(text).get(stage, {})


def via_airflow(airflow_python: Path, args: Sequence[str], root: Path, ds: str, env: str, conf: Path,
                timeout: float) -> dict:
    """One whole DAG run in a real Airflow 3, each task spark-submitting with ``args``; returns each stage's
    result, read from the run's log. The runner's own output (its last line included) passes through."""
    if any(" " in arg for arg in args):
        raise ValueError(f"lakerec_submit_args is split on whitespace: no argument may hold a space: {list(args)}")
    cmd = [str(airflow_python), str(AIRFLOW_RUNNER), "--pipeline-python", sys.executable, "--ds", ds,
           "--env", env, "--conf", str(conf), "--submit-args", " ".join(args), "--root", str(root),
           "--timeout", str(timeout)]
    proc = subprocess.run(cmd, env=loopback_env(), timeout=timeout + 600)
    log_path = root / "airflow.log"
    if proc.returncode != 0:
        raise RuntimeError(f"the Airflow DAG run failed (exit {proc.returncode}); log {log_path}")
    text = log_path.read_text(errors="replace")
    sources = driver_sources(text)
    if len(sources) != len(STAGES) or not all(".whl" in source for source in sources):
        raise RuntimeError(f"not every task's driver ran lakerec from the wheel: {sources}; log {log_path}")
    return stage_results(text)


def executor_ranks(meta: dict, cluster: Cluster) -> tuple[int, int]:
    """(executors of the train app, ranks whose working directory was one of them)."""
    dirs = [Path(r["cwd"]) for r in meta.get("ranks", [])]
    apps = {d.parent.name for d in dirs if d.parent.parent in cluster.work_dirs}
    executors = {e for w in cluster.work_dirs for app in apps for e in (w / app).glob("*") if e.is_dir()}
    return len(executors), sum(d in executors for d in dirs)


def run(root: Path, ds: str, wheel: Path, source: Path, env: str, overrides: Sequence[str], workers: int = 2,
        timeout: float = 3600.0, airflow_python: Optional[Path] = None) -> str:
    """Submit every nightly job for ``ds`` to a fresh standalone cluster under ``root``, from here or (with
    ``airflow_python``) from the DAG in a real Airflow; returns the summary line."""
    if airflow_python and overrides:
        raise ValueError("--set does not reach the DAG's tasks: put the values in a conf/<env>.yaml instead")
    conf = run_config(root, source)
    work = root / "driver"  # the drivers' working directory: not the checkout
    work.mkdir(parents=True, exist_ok=True)
    with standalone(root / "cluster", workers=workers) as cluster:
        args = submit_args(cluster, wheel, env, conf, overrides, workers)
        if airflow_python:
            results = via_airflow(airflow_python, args, root / "airflow", ds, env, conf, timeout)
        else:
            results = {stage: submit(submit_command(args, stage, ds, env, conf, overrides), stage, work,
                                     root / f"{stage}.log", timeout) for stage, _ in STAGES}
        missing = [stage for stage, _ in STAGES if stage not in results]
        if missing:
            raise RuntimeError(f"no result logged by {missing}")
        serving = results["train"]["serving"]
        executors, ranks = executor_ranks(serving, cluster)
    if ranks != serving["world_size"]:
        raise RuntimeError(f"{ranks} of {serving['world_size']} training ranks ran on executors: {serving['ranks']}")
    return (f"cluster run ok master={cluster.master} executors={executors} train_ranks_on_executors={ranks} "
            f"recommendations={results['score']['rows']}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="lakerec nightly pipeline on a Spark standalone cluster on 127.0.0.1")
    parser.add_argument("--ds", required=True, help="run date YYYY-MM-DD")
    parser.add_argument("--env", default="local", help="conf/<env>.yaml, as packaged in the wheel")
    parser.add_argument("--wheel", type=Path, required=True, help="the built lakerec wheel (make wheel)")
    parser.add_argument("--root", type=Path, default=Path("cluster-run"), help="cluster, tables and logs (emptied first)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT / "data" / "ml-latest-small", help="input data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--airflow", type=Path, metavar="PYTHON",
                        help="an Airflow 3 virtualenv's python: the DAG submits the jobs, in one `airflow dags test` run")
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its cluster
    root = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    airflow = args.airflow.absolute() if args.airflow else None
    print(run(root, args.ds, args.wheel.resolve(), args.source.resolve(), args.env, args.set, args.workers,
              airflow_python=airflow))


if __name__ == "__main__":
    main()
