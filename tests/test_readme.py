"""The README stays true: its table schemas and config keys are the code's, and it documents every job."""
import re

from lakerec.config import REPO_ROOT, settings
from lakerec.readme import CONFIG_DOC, with_config, with_tables

README = (REPO_ROOT / "README.md").read_text()
CONFIG = CONFIG_DOC.read_text()


def test_readme_tables_and_config_keys_match_the_code():
    assert with_tables(README) == README, "run `python -m lakerec.readme` to refresh README.md"
    assert with_config(CONFIG) == CONFIG, "run `python -m lakerec.readme` to refresh docs/config.md"


def test_a_stale_generated_row_is_caught():
    assert with_config(CONFIG.replace("| `train.epochs` | `15` |", "| `train.epochs` | `10` |")) == CONFIG
    assert with_tables(README.replace("`ts` bigint, `split` string not null", "`ts` bigint")) == README


def test_every_key_the_readme_names_exists():
    known = {s.key for s in settings()}
    section = README.split("## Config keys")[1].split("##")[0]
    named = {key for key in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", section) if not key.endswith(".yaml")}
    assert named and named <= known | {"source.interactions", "source.items"}, named - known


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
    assert '--ds "$LAKEREC_DS"' in source and '"LAKEREC_DS": "{{ ds }}"' in source


def test_the_airflow_dag_does_not_catch_up_and_takes_its_start_date_from_a_setting():
    import ast

    source = (REPO_ROOT / "airflow" / "lakerec_nightly.py").read_text()
    keywords = {k.arg: k.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
                for k in node.keywords}
    assert ast.literal_eval(keywords["catchup"]) is False
    assert "LAKEREC_START_DATE" in source and "airflow backfill create" in source
