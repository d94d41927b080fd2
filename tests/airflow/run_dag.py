"""`make test-airflow`: the DAG in a real Airflow 3, in its own virtualenv (its pins clash with the pipeline's).

Run by the Airflow virtualenv's Python. It loads airflow/lakerec_nightly.py with a DagBag (no import
errors, no deprecation warnings, the contract of every task), fires the failure callback, then runs
one whole DAG run with `airflow dags test` on the embedded data: each task spark-submits a job with
the pipeline's own virtualenv and --submit-args (`make test-airflow`: local mode), into tables under
--root, or where --conf says (`lakerec.standalone --airflow`: on its cluster). The last line is
    airflow dag run state=success tasks=T
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "airflow" / "lakerec_nightly.py"
DAG_ID = "lakerec_nightly"


def run_conf(root: Path) -> Path:
    """The run's lakerec_conf: every path absolute, the tables of this run only, under ``root``."""
    path = root / "run.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "warehouse": str(root / "warehouse"), "models_dir": str(root / "models"),
        "reports_dir": str(root / "reports"), "spark": {"conf": {"spark.local.dir": str(root / "spark-tmp")}},
        "train": {"petastorm_cache_dir": str(root / "petastorm_cache")},
    }))
    return path


def airflow_env(root: Path, pipeline_python: Path, env: str, submit_args: str, conf: Path) -> dict[str, str]:
    """Airflow's home, database and DAG folder under ``root``, and the DAG's Variables (AIRFLOW_VAR_*)."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
        "AIRFLOW_VAR_LAKEREC_HOME": str(REPO),
        "AIRFLOW_VAR_LAKEREC_ENV": env,
        "AIRFLOW_VAR_LAKEREC_CONF": str(conf),
        "AIRFLOW_VAR_LAKEREC_PYTHON": str(pipeline_python),
        "AIRFLOW_VAR_LAKEREC_SPARK_SUBMIT": str(pipeline_python.parent / "spark-submit"),
        "AIRFLOW_VAR_LAKEREC_SUBMIT_ARGS": submit_args,
    }


def check_dagbag():
    """Load the DAG as the scheduler would; returns it. Raises on any problem."""
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(DAG_FILE))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    deprecated = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                  if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))]
    if deprecated:
        raise SystemExit("deprecation warnings while loading the DAG:\n" + "\n".join(deprecated))
    dag = bag.get_dag(DAG_ID)
    stages = [t.task_id for t in dag.topological_sort()]
    problems = []
    if dag.catchup:
        problems.append("catchup is on")
    for task in dag.tasks:
        if not task.execution_timeout or task.execution_timeout > timedelta(hours=12):
            problems.append(f"{task.task_id}: execution_timeout {task.execution_timeout}")
        if task.pool != "lakerec":
            problems.append(f"{task.task_id}: pool {task.pool}")
        if not task.on_failure_callback:
            problems.append(f"{task.task_id}: no failure callback")
    if max(dag.tasks, key=lambda t: t.execution_timeout).task_id != "train":
        problems.append("train does not have the longest execution_timeout")
    if problems:
        raise SystemExit("DAG contract: " + "; ".join(problems))
    print(f"DagBag: {DAG_ID} loaded, no import errors, no deprecation warnings, tasks {stages}")
    return dag


def check_failure_hook(dag, root: Path) -> None:
    """A task's failure callback runs `lakerec_alert_command` with the failure's details in its environment."""
    out = root / "alert.env"
    os.environ["AIRFLOW_VAR_LAKEREC_ALERT_COMMAND"] = f"sh -c 'env > {out}'"
    callbacks = dag.get_task("train").on_failure_callback
    ti = SimpleNamespace(dag_id=DAG_ID, task_id="train", try_number=2, log_url="http://127.0.0.1/log")
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        callback({"ti": ti, "ds": "2026-11-29", "exception": RuntimeError("rank 1 died")})
    fired = out.read_text() if out.is_file() else ""
    if f"LAKEREC_FAILED_TASK={DAG_ID}.train" not in fired or "LAKEREC_ERROR=rank 1 died" not in fired:
        raise SystemExit(f"the failure callback did not run lakerec_alert_command with the details: {fired[:500]!r}")
    del os.environ["AIRFLOW_VAR_LAKEREC_ALERT_COMMAND"]
    print("failure callback: ran lakerec_alert_command with the failed task's details")


def airflow(env: dict[str, str], *args: str, log: Path, timeout: float) -> str:
    """Run the Airflow CLI of this virtualenv; its output goes to ``log`` and is returned."""
    cli = Path(sys.executable).parent / "airflow"
    with open(log, "a") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run([str(cli), *args], env=env, stdout=subprocess.PIPE, stderr=out, text=True,
                              timeout=timeout)
        out.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed (exit {proc.returncode}); log {log}:\n"
                         + log.read_text(errors="replace")[-4000:])
    return proc.stdout


def json_output(text: str) -> list:
    """The JSON list an Airflow CLI command printed, skipping any warning lines printed before it."""
    return json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("[")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline-python", type=Path, required=True, help="the pipeline virtualenv's python")
    parser.add_argument("--ds", required=True)
    parser.add_argument("--env", default="local", help="lakerec_env: conf/<env>.yaml")
    parser.add_argument("--submit-args", required=True, help="lakerec_submit_args: master, --packages or --jars")
    parser.add_argument("--root", type=Path, default=REPO / "airflow-run", help="emptied first")
    parser.add_argument("--conf", type=Path, help="lakerec_conf (default: one putting every table under --root)")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    root = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    conf = args.conf.resolve() if args.conf else run_conf(root)
    env = airflow_env(root, args.pipeline_python.absolute(), args.env, args.submit_args, conf)
    log = root / "airflow.log"
    airflow(env, "db", "migrate", log=log, timeout=600)
    os.environ.update(env)  # before Airflow is imported: its home and database are this run's
    dag = check_dagbag()
    check_failure_hook(dag, root)
    tasks = len(dag.tasks)
    airflow(env, "pools", "set", "lakerec", "1", "lakerec nightly", log=log, timeout=120)
    airflow(env, "dags", "test", DAG_ID, args.ds, log=log, timeout=args.timeout)
    runs = json_output(airflow(env, "dags", "list-runs", DAG_ID, "--output", "json", log=log, timeout=120))
    run = next(r for r in runs if str(r["logical_date"]).startswith(args.ds))
    states = json_output(airflow(env, "tasks", "states-for-dag-run", DAG_ID, run["run_id"], "--output", "json",
                                 log=log, timeout=120))
    succeeded = sum(s["state"] == "success" for s in states)
    if run["state"] != "success" or succeeded != tasks:
        raise SystemExit(f"DAG run {run['run_id']}: state {run['state']}, {succeeded} of {tasks} tasks succeeded; "
                         f"log {log}")
    print(f"airflow dag run state={run['state']} tasks={succeeded}")


if __name__ == "__main__":
    main()
