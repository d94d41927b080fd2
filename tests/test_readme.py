"""The README stays true: its table schemas and config keys are the code's, and it documents every job."""
from lakerec.config import REPO_ROOT, readme_with_config
from lakerec.tables import readme_with_schemas

README = (REPO_ROOT / "README.md").read_text()


def test_readme_table_schemas_match_the_contracts():
    assert readme_with_schemas(README) == README, "run `python -m lakerec.tables` to refresh README.md"


def test_readme_config_table_matches_the_code():
    assert readme_with_config(README) == README, "run `python -m lakerec.config` to refresh README.md"
    stale = README.replace("| `train.epochs` | `15` |", "| `train.epochs` | `10` |")
    assert stale != README and readme_with_config(stale) == README


def test_readme_documents_every_job_and_quick_start():
    assert README.index("make run") < README.index("make test")
    for job in sorted((REPO_ROOT / "jobs").glob("*.py")):
        assert f"jobs/{job.name}" in README


def test_airflow_dag_runs_every_job_in_pipeline_order():
    import ast

    from lakerec.pipeline import STAGES

    source = (REPO_ROOT / "airflow" / "lakerec_nightly.py").read_text()
    tree = ast.parse(source)
    dag_stages = next(
        ast.literal_eval(node.value) for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "STAGES"
    )
    assert dag_stages == tuple(name for name, _ in STAGES)
    assert all((REPO_ROOT / "jobs" / f"{name}.py").is_file() for name in dag_stages)
    assert "--ds {{ ds }}" in source
