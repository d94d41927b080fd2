"""Airflow 3 DAG: the lakerec nightly pipeline, one spark-submit task per job, ds templated.

Copy this file into the DAGs folder, create the pool (`airflow pools set lakerec 1 "lakerec nightly"`)
and set the Airflow Variables:
- `lakerec_home`: a checkout or unpacked release on the workers; its `lib/` goes on PYTHONPATH and
  its `conf/` is the config folder (`LAKEREC_CONF_DIR`);
- `lakerec_env` (conf/<env>.yaml, default `cluster`), `lakerec_conf` (one more YAML file, optional);
- `lakerec_spark_submit` (default `spark-submit` on the worker's PATH) and `lakerec_python` (the
  interpreter of the pipeline's environment, default `python3`);
- `lakerec_submit_args`: master, deploy mode, `--py-files lakerec.whl`, `--packages` or `--jars`;
- `lakerec_alert_command` (optional): run on a task's failure, see :func:`notify_failure`.
The first night scheduled is `LAKEREC_START_DATE` (YYYY-MM-DD, from the scheduler's environment; a
fixed date, never "now", which would move the schedule on every parse).

Operators: the standard provider's BashOperator running spark-submit, not SparkSubmitOperator. The
command is the one the README and `make run-cluster` use, and Airflow's environment needs no Spark:
the Spark provider would install pyspark beside Airflow, whose pins clash with the pipeline's.

`catchup` is off: unpausing the DAG runs the next night, not every night since the start date. Each
run for {{ ds }} reads only what had arrived by the end of {{ ds }} and writes only {{ ds }}'s
partitions and its own model version, so a failed task can be cleared and rerun, and a missed or
corrected night is backfilled one at a time, oldest first:

    airflow backfill create --dag-id lakerec_nightly --from-date 2026-11-01 --to-date 2026-11-07 \
        --max-active-runs 1

Every task has an `execution_timeout` (train's is the longest): a hung DDP run fails its task, and
its ranks exit with the killed driver, rather than blocking every later night (`max_active_runs=1`).
All tasks share the `lakerec` pool, so a backfill and the nightly run never train at once.

No templated value is pasted into the bash command: the Variables and {{ ds }} reach it as
environment variables (`env` is templated) and are used quoted, so a Variable holding `;`, `$(...)`
or spaces stays one argument. `lakerec_submit_args` alone is deliberately left unquoted: split on
whitespace into spark-submit's arguments, with globbing off (`set -f`) and no quote removal, so an
argument that itself holds a space cannot be passed there (put such a setting in conf/<env>.yaml
under `spark.conf` instead).
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Variable

log = logging.getLogger(__name__)

STAGES = ("ingest", "features", "embed", "train", "segment", "score", "evaluate")
POOL = "lakerec"
TIMEOUT = timedelta(hours=1)
TIMEOUTS = {"train": timedelta(hours=4), "evaluate": timedelta(hours=2)}
SUBMIT = (
    'set -f && cd "$LAKEREC_HOME" && '
    'export PYTHONPATH="$LAKEREC_HOME/lib${PYTHONPATH:+:$PYTHONPATH}" LAKEREC_CONF_DIR="$LAKEREC_HOME/conf" '
    'PYSPARK_PYTHON="$LAKEREC_PYTHON" PYSPARK_DRIVER_PYTHON="$LAKEREC_PYTHON" && '
    '"$LAKEREC_SPARK_SUBMIT" $LAKEREC_SUBMIT_ARGS jobs/{stage}.py --ds "$LAKEREC_DS" --env "$LAKEREC_ENV" '
    '${LAKEREC_CONF:+--conf "$LAKEREC_CONF"}'
)
ENV = {
    "LAKEREC_HOME": "{{ var.value.lakerec_home }}",
    "LAKEREC_SUBMIT_ARGS": "{{ var.value.get('lakerec_submit_args', '--packages io.delta:delta-spark_4.2_2.13:4.4.0') }}",
    "LAKEREC_ENV": "{{ var.value.get('lakerec_env', 'cluster') }}",
    "LAKEREC_CONF": "{{ var.value.get('lakerec_conf', '') }}",
    "LAKEREC_SPARK_SUBMIT": "{{ var.value.get('lakerec_spark_submit', 'spark-submit') }}",
    "LAKEREC_PYTHON": "{{ var.value.get('lakerec_python', 'python3') }}",
    "LAKEREC_DS": "{{ ds }}",
}
START_DATE = datetime.fromisoformat(os.environ.get("LAKEREC_START_DATE", "2026-01-01"))


def notify_failure(context: dict) -> None:
    """The failure-callback hook: log the failed task, then run `lakerec_alert_command` if set.

    The command is split like a shell would (no shell runs it) and gets the details as environment
    variables: LAKEREC_FAILED_TASK, LAKEREC_DS, LAKEREC_TRY, LAKEREC_LOG_URL, LAKEREC_ERROR.
    """
    ti = context["ti"]
    details = {"LAKEREC_FAILED_TASK": f"{ti.dag_id}.{ti.task_id}", "LAKEREC_DS": str(context.get("ds", "")),
               "LAKEREC_TRY": str(ti.try_number), "LAKEREC_LOG_URL": str(getattr(ti, "log_url", "")),
               "LAKEREC_ERROR": str(context.get("exception", ""))[:2000]}
    log.error("lakerec task failed: %s", details)
    command = Variable.get("lakerec_alert_command", default="")
    if command:
        subprocess.run(shlex.split(command), env={**os.environ, **details}, check=False, timeout=60)


with DAG(
    dag_id="lakerec_nightly",
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10), "pool": POOL,
                  "on_failure_callback": notify_failure},
    tags=["lakerec", "recommendations"],
) as dag:
    previous = None
    for stage in STAGES:
        # append_env: the task keeps the worker's PATH and JAVA_HOME beside these.
        task = BashOperator(task_id=stage, bash_command=SUBMIT.replace("{stage}", stage), env=ENV, append_env=True,
                            execution_timeout=TIMEOUTS.get(stage, TIMEOUT))
        if previous is not None:
            previous >> task
        previous = task
