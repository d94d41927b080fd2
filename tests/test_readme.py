"""The README stays true: its table schemas and config keys are the code's, and it documents every job."""
from lakerec.config import REPO_ROOT
from lakerec.readme import with_generated_sections

README = (REPO_ROOT / "README.md").read_text()


def test_readme_tables_and_config_keys_match_the_code():
    assert with_generated_sections(README) == README, "run `python -m lakerec.readme` to refresh README.md"


def test_a_stale_generated_row_is_caught():
    for row, stale in (("| `train.epochs` | `15` |", "| `train.epochs` | `10` |"),
                       ("`ts` bigint, `split` string not null", "`ts` bigint")):
        assert row in README
        assert with_generated_sections(README.replace(row, stale)) == README


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
