"""The identity of the process running a test function, unique per instance in every sandbox tier.

A pid does not do: in the `ns` tier every instance serves from pid 2 of its own PID namespace.
The identity is the pid with 64 random bits drawn at import, drawn again in a forked child, so
that two processes never share one. Test functions return it as `identity`; the tests compare
identities to tell whether two calls ran on the same instance process. To find an instance's
process on the host, the tests read the supervisor's log instead (tests/e2e_helpers.py).
"""

import os
import secrets

_identity = ""


def _draw() -> None:
    """Draw this process's identity."""
    global _identity
    _identity = f"{os.getpid()}-{secrets.randbits(64):016x}"


def identity() -> str:
    """This process's identity: `<pid>-<16 hex digits>`."""
    return _identity


_draw()
os.register_at_fork(after_in_child=_draw)
