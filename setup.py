"""Build: the supervisor's per-call modules are compiled to C with mypyc.

The one supervisor process that every call crosses caps the server's throughput at 1 / (its CPU
per call), and half of that CPU was the interpreter running these modules. mypyc turns their
annotated Python into C extensions: native attribute access and calls between them, the same
semantics (the test suite runs against the compiled build). The Python files stay the source of
truth; the extensions sit beside them and are imported in their place.

SFSUPERVISOR_PURE_PYTHON=1 skips the compilation (no C compiler, or stepping through the code),
and a machine without a compiler gets the pure-Python package instead of a failed install. After
editing a compiled module, install again (`pip install -e .`): until then the old extension is
imported, and tests/test_compiled.py fails to say so.
"""

import os

from setuptools import setup

# The modules on the path of every call; the rest of the supervisor runs at start and on events.
COMPILED = [
    "supervisor/calls.py",
    "supervisor/deadlines.py",
    "supervisor/http.py",
    "supervisor/http11.py",
    "supervisor/instance.py",
    "supervisor/logs.py",
    "supervisor/metrics.py",
    "supervisor/pipes.py",
    "supervisor/pool.py",
    "supervisor/responses.py",
]


def compiled_extensions() -> list:
    if os.environ.get("SFSUPERVISOR_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    extensions = mypycify(COMPILED, opt_level="3", group_name="sfsupervisor")
    for extension in extensions:
        extension.optional = True  # a failed compilation leaves the Python modules in use
    return extensions


setup(ext_modules=compiled_extensions())
