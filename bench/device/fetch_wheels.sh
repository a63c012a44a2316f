#!/usr/bin/env bash
# Wheels of the packages eventrec's serving benchmark needs that the GPU machine's image lacks
# (polars, pydantic and their own needs), for its Python 3.12, into .whl/ (gitignored). Run here,
# once, before the device call of bench/device/serving_gpu.sh; the call carries .whl.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    polars==2.1.0 polars-runtime-32==2.1.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing-extensions==4.16.0
du -sh .whl
