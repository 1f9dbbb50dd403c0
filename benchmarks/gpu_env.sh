# Sourced by the GPU scripts (gpu_perf.sh, gpu_session.sh), from the repository root: the
# packages the card's image lacks, installed from the wheels carried in .whl
# (benchmarks/gpu_wheels.sh), mcgen on the path from this checkout, and `mcgen` as a
# function (the card has no installed mcgen), exported for child shells.
if ! python3 -c "import pydantic, optuna" 2> /dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
mcgen() { python3 -c "import sys; from mcgen.cli import app; sys.argv[0] = 'mcgen'; app()" "$@"; }
export -f mcgen
