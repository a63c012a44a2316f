#!/usr/bin/env bash
# The build's throughput on more cores than this project's 2-core machine (issue 24's goal, >= 1M
# events/s on both 1M-user shapes, is out of reach of 2 cores: see bench/results/build_store.md).
# Prepare here once:  bash bench/device/fetch_wheels.sh
# Then the device tool:  run  command="bash bench/device/build_cores.sh"  carry=[".whl"]  timeout_s=600
# On the device machine (16 cores): both shapes generated there (~1 min each, not carried), then
# bench/build_store.py with the polars engine at 2, 4 and 8 partitions in flight, and DuckDB beside
# the last where the machine has it (its wheel would not fit the carry's 64 MiB beside polars'), in
# one run per shape. Writes to $OUT (bench/out/device elsewhere): cores.txt and one table per shape.
# USERS=20000 PYTHON=.venv/bin/python bash bench/device/build_cores.sh: a small check of the script itself.
set -uo pipefail
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/device}
USERS=${USERS:-1000000}
WORK=${WORK:-/tmp/build_cores}
mkdir -p "$OUT" "$WORK"
{ nproc; free -g | head -2; "$PYTHON" -c "import polars, pyarrow; print('polars', polars.__version__, 'pyarrow', pyarrow.__version__)"; } | tee "$OUT/cores.txt"
duckdb=""
"$PYTHON" -c "import duckdb" 2>/dev/null && duckdb="duckdb"
echo "duckdb: ${duckdb:-not installed, not run}" | tee -a "$OUT/cores.txt"
for shape in issue default; do
    for workers in 2 4 8; do
        variants="polars"
        [ "$workers" = 8 ] && variants="polars $duckdb"
        timeout 280 "$PYTHON" bench/build_store.py --shape "$shape" --users "$USERS" --workers "$workers" --variants $variants \
            --workdir "$WORK" 2>&1 | tee -a "$OUT/build_${shape}.md"
    done
done
