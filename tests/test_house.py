"""The house rules a reader relies on: short functions, modules by concern, imports that stay light."""
import ast
import json
import subprocess
import sys

import pytest

from lakerec.config import REPO_ROOT

LIBRARY = sorted((REPO_ROOT / "lib" / "lakerec").glob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450

# One fresh interpreter, imports in this order, a fact recorded after each step.
IMPORT_FACTS = """
import json, sys
facts = {}
import lakerec.validation, lakerec.metrics
facts["spark_in_validation"] = sorted(m for m in sys.modules if m.split(".")[0] in ("pyspark", "delta"))
import lakerec.baselines
facts["evaluate_in_baselines"] = "lakerec.evaluate" in sys.modules
import lakerec.score, lakerec.evaluate, lakerec.report
facts["trainer_in_scoring"] = [m for m in ("lakerec.train", "lakerec.trainer", "lakerec.data", "petastorm")
                               if m in sys.modules]
import lakerec.data as data
from petastorm import reader
facts["patched_at_import"] = reader.ThreadPool is data.EndOfDataSafeThreadPool
data.install_petastorm_patches()
data.install_petastorm_patches()
facts["patched_by_the_reader"] = reader.ThreadPool is data.EndOfDataSafeThreadPool
print(json.dumps(facts))
"""


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_no_function_over_60_lines_and_no_module_over_450(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"split these in {path.name}: {long}"


@pytest.fixture(scope="module")
def import_facts() -> dict:
    out = subprocess.run([sys.executable, "-c", IMPORT_FACTS], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_ingest_and_features_do_not_import_torch():
    """Their drivers would pay seconds for an import they never use."""
    probe = "import sys, lakerec.ingest, lakerec.features; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_training_workers_import_the_validation_code_without_spark(import_facts):
    """GPU nodes have no Spark."""
    assert import_facts["spark_in_validation"] == []


def test_the_baselines_do_not_import_the_evaluation_job(import_facts):
    """The evaluation imports the baselines and passes its tuning hook in: no cycle."""
    assert import_facts["evaluate_in_baselines"] is False


def test_scoring_and_evaluation_import_neither_the_trainer_nor_petastorm(import_facts):
    """The scorer runs in Spark's Python workers: it must not drag in torch.distributed or Petastorm."""
    assert import_facts["trainer_in_scoring"] == []


def test_importing_the_data_module_patches_petastorm_only_when_a_reader_asks(import_facts):
    assert import_facts["patched_at_import"] is False
    assert import_facts["patched_by_the_reader"] is True
