"""The modules setup.py compiles with mypyc: the build in use matches their source.

An editable install leaves each compiled module's extension beside its .py file, and Python
imports the extension first: after an edit, the old code would run, and tests would pass or fail
against code that is no longer there.
"""

import ast
import importlib
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).parent.parent


def compiled_modules() -> list[str]:
    """The COMPILED list of setup.py, as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED list")


@pytest.mark.parametrize("name", compiled_modules())
def test_a_compiled_module_is_not_older_than_its_source(name: str) -> None:
    module = importlib.import_module(name)
    source = ROOT / (name.replace(".", "/") + ".py")
    if not module.__file__.endswith(".so"):
        assert Path(module.__file__).resolve() == source.resolve()
        return
    built = Path(module.__file__)
    assert built.stat().st_mtime >= source.stat().st_mtime, (
        f"{source.name} changed after {built.name} was built: run `pip install -e .` again")


@pytest.mark.skipif(not os.environ.get("CI"), reason="a machine without a C compiler runs the "
                    "pure-Python modules; CI must test the compiled ones")
def test_ci_tests_the_compiled_build() -> None:
    pure = [name for name in compiled_modules()
            if not importlib.import_module(name).__file__.endswith(".so")]
    assert not pure, f"not compiled: {pure} (see setup.py)"
