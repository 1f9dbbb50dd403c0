#!/usr/bin/env bash
# Download, here, the wheels the GPU card's image lacks for benchmarks/gpu_perf.sh and
# gpu_session.sh (the card has torch, triton, typer, rich, jinja2, networkx, pyyaml and
# matplotlib, but not these, and it reaches no registry). They land in .whl/, which git
# ignores through .git/info/exclude; name `.whl` in the device call's carry list.
#
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2> /dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# The card runs CPython 3.12 on x86_64 (manylinux); versions are those mcgen is tested with.
for package in pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 \
    colorlog==6.12.0 mako==1.4.3 greenlet fla-core==0.6.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$package"
done
ls .whl
