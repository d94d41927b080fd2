"""Airflow DAG: the lakerec nightly pipeline, one spark-submit task per job, ds templated.

Copy this file into the DAGs folder and set the Airflow Variables `lakerec_home` (a checkout or
unpacked release on the workers) and, optionally, `lakerec_env` (conf/<env>.yaml, default cluster)
and `lakerec_submit_args` (master, deploy mode, --py-files, --packages or --jars). The first night
scheduled is `LAKEREC_START_DATE` (YYYY-MM-DD, from the scheduler's environment; a fixed date,
never "now", which would move the schedule on every parse).

`catchup` is off: unpausing the DAG runs the next night, not every night since the start date.
Each run for {{ ds }} reads only what had arrived by the end of {{ ds }} (drops ingested on or
before it, events not after it) and writes only {{ ds }}'s partitions and its own model version,
so a failed task can be cleared and rerun, and a missed or corrected night is backfilled one at a
time, oldest first (Airflow 3):

    airflow backfill create --dag-id lakerec_nightly --from-date 2026-11-01 --to-date 2026-11-07 \
        --max-active-runs 1

A backfilled night reads its own drop (`source.path` with `{ds}`) and the bronze rows that had
arrived by then; it never moves `models/LATEST` back and never rewrites a later night's outputs.

No templated value is pasted into the bash command: the Variables and {{ ds }} reach it as
environment variables (`env` is templated) and are used quoted, so a Variable holding `;`, `$(...)`
or spaces stays one argument. `lakerec_submit_args` alone is deliberately left unquoted: split on
whitespace (spaces, tabs, newlines) into spark-submit's arguments, with globbing off (`set -f`) and
no quote removal, so an argument that itself holds a space cannot be passed there (put such a
setting in conf/<env>.yaml under `spark.conf` instead).
"""
import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator

STAGES = ("ingest", "features", "embed", "train", "segment", "score", "evaluate")
SUBMIT = (
    'set -f && cd "$LAKEREC_HOME" && '
    'spark-submit $LAKEREC_SUBMIT_ARGS jobs/{stage}.py --ds "$LAKEREC_DS" --env "$LAKEREC_ENV"'
)
ENV = {
    "LAKEREC_HOME": "{{ var.value.lakerec_home }}",
    "LAKEREC_SUBMIT_ARGS": "{{ var.value.get('lakerec_submit_args', '--packages io.delta:delta-spark_2.13:4.0.1') }}",
    "LAKEREC_ENV": "{{ var.value.get('lakerec_env', 'cluster') }}",
    "LAKEREC_DS": "{{ ds }}",
}
START_DATE = datetime.fromisoformat(os.environ.get("LAKEREC_START_DATE", "2026-01-01"))

with DAG(
    dag_id="lakerec_nightly",
    schedule="0 2 * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["lakerec", "recommendations"],
) as dag:
    previous = None
    for stage in STAGES:
        # append_env: the task keeps the worker's PATH, JAVA_HOME and SPARK_HOME beside these.
        task = BashOperator(task_id=stage, bash_command=SUBMIT.replace("{stage}", stage), env=ENV, append_env=True)
        if previous is not None:
            previous >> task
        previous = task
