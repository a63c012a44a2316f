"""The quality tests import the benchmark's own package, ``bench.quality``, from the repository root
(``python -m pytest`` puts the working directory first; a bare ``pytest`` does not)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
