"""Build: the supervisor's per-call modules are compiled to C with mypyc.

The one supervisor process that every call crosses caps the server's throughput at 1 / (its CPU
per call), and half of that CPU was the interpreter running these modules. mypyc turns their
annotated Python into C extensions: native attribute access and calls between them, the same
semantics (the test suite runs against the compiled build). The Python files stay the source of
truth; the extensions sit beside them and are imported in their place.

SFSUPERVISOR_PURE_PYTHON=1 skips the compilation (no C compiler, or stepping through the code),
and a machine where it fails gets the pure-Python package instead of a failed install. After
editing a compiled module, install again (`pip install -e .`): until then the old extension is
imported, and tests/test_compiled.py fails to say so.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules on the path of every call; the rest of the supervisor runs at start and on events.
COMPILED = [
    "supervisor/calls.py",
    "supervisor/deadlines.py",
    "supervisor/http.py",
    "supervisor/http11.py",
    "supervisor/instance.py",
    "supervisor/limits.py",
    "supervisor/logs.py",
    "supervisor/metrics.py",
    "supervisor/pipes.py",
    "supervisor/pool.py",
    "supervisor/responses.py",
]
# The shared library of their code, a top-level module (mypyc adds "__mypyc" to the name).
LIBRARY = "sfsupervisor"


def compiled_extensions() -> list:
    if os.environ.get("SFSUPERVISOR_PURE_PYTHON") == "1":
        remove_earlier_builds()
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3", group_name=LIBRARY)


def remove_earlier_builds() -> None:
    """Extensions an earlier editable install left beside the sources would still be imported."""
    root = Path(__file__).parent
    for module in [*COMPILED, f"{LIBRARY}__mypyc"]:
        for built in root.glob(module.removesuffix(".py") + ".*.so"):
            built.unlink()


class AllOrNone(build_ext):
    """Build every extension or none of them.

    The modules' extensions call into one shared library (the group's): a build that made some
    and not others, or that left an earlier build's beside the sources, would not import.
    """

    def run(self) -> None:
        inplace = self.inplace  # run() clears it while it builds, and restores it on success
        try:
            super().run()
        except Exception as exc:  # distutils' compile, link and exec errors have no common base
            print(f"warning: compiling with mypyc failed ({exc}); installing pure Python")
            for extension in self.extensions:  # beside the sources, and in the build tree
                for self.inplace in (True, False):
                    Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self.inplace, self.extensions = inplace, []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": AllOrNone})
