"""The standalone-cluster runner (`make run-cluster`): the cluster's life, its loopback-only sockets, its checks.

The whole pipeline on the cluster is `make run-cluster`; CI runs it from the DAG in a real Airflow
(`make test-e2e ENV=smoke`) after `make test`.
"""
import sys
from pathlib import Path

import psutil
import pytest

from lakerec import standalone


@pytest.mark.parametrize("ip, loopback", [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                          ("0.0.0.0", False), ("::", False), ("10.1.2.3", False)])
def test_only_loopback_addresses_count_as_loopback(ip, loopback):
    assert standalone.is_loopback(ip) is loopback


def test_ranks_count_as_on_executors_only_when_they_ran_in_an_executor_dir(tmp_path):
    workers = [tmp_path / "worker-0", tmp_path / "worker-1"]
    for i, worker in enumerate(workers):
        (worker / "app-1" / str(i)).mkdir(parents=True)
    cluster = standalone.Cluster("spark://127.0.0.1:1", "http://127.0.0.1:2", workers, [])
    on_executors = {"ranks": [{"cwd": str(workers[0] / "app-1" / "0")}, {"cwd": str(workers[1] / "app-1" / "1")}]}
    assert standalone.executor_ranks(on_executors, cluster) == (2, 2)
    on_driver = {"ranks": [{"cwd": str(tmp_path / "driver")}, {"cwd": str(workers[1] / "app-1" / "1")}]}
    assert standalone.executor_ranks(on_driver, cluster) == (2, 1)


def _fake_submit(tmp_path: Path, lines: list[str], code: int = 0) -> list[str]:
    script = tmp_path / "submit.py"
    script.write_text(f"import sys\nprint({chr(10).join(lines)!r})\nsys.exit({code})\n")
    return [sys.executable, str(script)]


def test_a_submit_returns_the_stage_result_from_a_driver_that_ran_the_wheel(tmp_path):
    lines = ["x INFO lakerec: lakerec 0.1.0 from /d/lakerec-0.1.0-py3-none-any.whl/lakerec",
             'x INFO lakerec: lakerec score result: {"rows": 61000}']
    assert standalone.submit(_fake_submit(tmp_path, lines), "score", tmp_path, tmp_path / "s.log", 60) == {"rows": 61000}
    checkout = ["x INFO lakerec: lakerec 0.1.0 from /work/lib/lakerec", lines[1]]
    with pytest.raises(RuntimeError, match="not run lakerec from the wheel"):
        standalone.submit(_fake_submit(tmp_path, checkout), "score", tmp_path, tmp_path / "s.log", 60)
    with pytest.raises(RuntimeError, match=r"spark-submit score failed \(exit 3\)"):
        standalone.submit(_fake_submit(tmp_path, lines, code=3), "score", tmp_path, tmp_path / "s.log", 60)


def test_stage_results_are_read_from_plain_and_airflow_logs():
    plain = ('x INFO lakerec: lakerec score result: {"rows": 61000}\n'
             'x INFO lakerec: lakerec evaluate result: [{"k": 10}] more\n')
    airflow = ('2026-11-30T16:23:17Z [info     ] 2026-11-30 16:23:17,318 INFO lakerec: lakerec train result: '
               '{"serving": {"world_size": 2, "ranks": [{"cwd": "/w/0"}]}} [airflow.task.hooks] loc=subprocess.py:106\n')
    assert standalone.stage_results(plain + airflow) == {
        "score": {"rows": 61000}, "evaluate": [{"k": 10}],
        "train": {"serving": {"world_size": 2, "ranks": [{"cwd": "/w/0"}]}}}


def test_overrides_are_refused_when_the_dag_submits_the_jobs(tmp_path):
    with pytest.raises(ValueError, match="--set does not reach the DAG"):
        standalone.run(tmp_path, "2026-11-30", tmp_path / "w.whl", tmp_path, "smoke", ["train.epochs=2"],
                       airflow_python=Path(sys.executable))


@pytest.mark.slow
def test_the_cluster_listens_on_loopback_only_and_is_stopped_whatever_happens(tmp_path):
    with pytest.raises(KeyError, match="a failing run"):
        with standalone.standalone(tmp_path, workers=1, memory="1g") as cluster:
            family = [p for proc in cluster.processes for p in (psutil.Process(proc.pid),
                                                                 *psutil.Process(proc.pid).children(recursive=True))]
            state = standalone.master_state(cluster.ui)
            assert state["aliveworkers"] == 1 and state["url"] == cluster.master
            sockets = standalone.listening(cluster.processes)
            assert sockets and all(standalone.is_loopback(ip) for ip, _ in sockets)
            raise KeyError("a failing run")
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
