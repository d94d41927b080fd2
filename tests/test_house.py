"""The house rules a reader relies on: short functions, modules by concern, imports that stay light."""
import ast
import subprocess
import sys

import pytest

from lakerec.config import REPO_ROOT

LIBRARY = sorted((REPO_ROOT / "lib" / "lakerec").glob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_no_function_over_60_lines_and_no_module_over_450(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"split these in {path.name}: {long}"


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_scoring_and_evaluation_import_neither_the_trainer_nor_petastorm():
    """The scorer runs in Spark's Python workers: it must not drag in torch.distributed or Petastorm."""
    loaded = _fresh_python("import sys, lakerec.score, lakerec.evaluate, lakerec.report; "
                           "print([m for m in ('lakerec.train', 'lakerec.trainer', 'lakerec.data', 'petastorm') "
                           "if m in sys.modules])")
    assert loaded == "[]"


def test_importing_the_data_module_patches_nothing_until_a_reader_asks():
    patched = _fresh_python("import lakerec.data as d; from petastorm import reader; "
                            "before = reader.ThreadPool is d.EndOfDataSafeThreadPool; d.install_petastorm_patches(); "
                            "d.install_petastorm_patches(); print(before, reader.ThreadPool is d.EndOfDataSafeThreadPool)")
    assert patched == "False True"
