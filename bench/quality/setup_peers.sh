#!/usr/bin/env bash
# Peer libraries for the quality benchmark (issue 6): FuxiCTR 2.3.10 and RecBole 1.2.1 in .venv-peers/.
# Idempotent: re-running only installs what is missing. Every version is pinned.
#   torch==2.13.0 first (a pinned CPU build that pip finds on local disk; a looser pin pulls CUDA),
#   then requirements-peers.txt with --no-deps: numpy<2 (RecBole 1.2.1), the imports FuxiCTR and
#   RecBole actually make, and fuxictr / recbole themselves installed without their declared deps.
# Deliberate mismatches with declared metadata (pip check reports them):
#   recbole declares ray<=2.6.3 (only recbole.quick_start imports ray.tune; the peer scripts don't
#   use it) and plotly (hyper-parameter plots only); fuxictr needs ray>=2.52 because its
#   preprocess and parquet loader modules import ray.data at import time: ray 2.52.0 is installed
#   for that import; the peer script never starts a ray cluster.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv-peers"
req="$root/bench/quality/peers/requirements-peers.txt"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0"
fi
"${pip[@]}" install --no-deps -r "$req"
"$venv/bin/python" - <<'PY'
import fuxictr, recbole, numpy, torch
from fuxictr.preprocess import FeatureProcessor  # noqa: F401  (imports ray.data)
from model_zoo.LongCTR.DIN import DIN  # noqa: F401
from recbole.model.sequential_recommender import SASRec  # noqa: F401
assert numpy.__version__.startswith("1."), numpy.__version__
print(f"peers ready: torch {torch.__version__}, fuxictr {fuxictr.__version__}, recbole {recbole.__version__}, numpy {numpy.__version__}")
PY
