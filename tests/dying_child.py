"""Test helper: the source of a child process that runs ``eventrec ARGV`` and can SIGKILL itself.

The child is started as ``python CHILD SPEC ARGV...`` (or ``python -c CHILD SPEC ARGV...``): ``SPEC`` is
``""`` (no kill) or ``module|attribute.path:n``, and the n-th call of that attribute kills the process
with a real SIGKILL before the call runs.
"""

from __future__ import annotations

# wrap `module|attribute.path:n` so that its n-th call kills the process with SIGKILL, then set up `eventrec ARGV`
_KILL_AT_CALL = """
import importlib, os, signal, sys
spec, argv = sys.argv[1], sys.argv[2:]
if spec:
    target, n = spec.rsplit(":", 1)
    module_name, path = target.split("|")
    owner = importlib.import_module(module_name)
    *parents, attribute = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original, calls = getattr(owner, attribute), [0]
    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, attribute, dying)
from eventrec.cli import app
sys.argv = ["eventrec", *argv]
"""
_RUN = """app()
"""
# the same, then say on stderr whether TorchRec was imported (also when the command fails)
_RUN_AND_REPORT_TORCHREC = """try:
    app()
finally:
    print(f"torchrec imported: {'torchrec' in sys.modules}", file=sys.stderr)
"""


def child_source(*, report_torchrec: bool = False) -> str:
    """The child's Python source; ``report_torchrec``: end with a stderr line ``torchrec imported: True|False``."""
    return _KILL_AT_CALL + (_RUN_AND_REPORT_TORCHREC if report_torchrec else _RUN)
