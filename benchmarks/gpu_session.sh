#!/usr/bin/env bash
# One GPU lease in one call: the environment, `mcgen validate --backend triton` for every
# linear and decay spec at the shapes of issue 3 (both read forms), then the benchmark
# sweeps of issue 4. Everything lands in $OUT/results.tgz (the device tool brings back at
# most 8 files) and a summary is printed last.
#
#   bash benchmarks/gpu_session.sh            # on a CUDA machine, from the repository root
#
# Stages have their own time limits (seconds; environment variables) so that a slow or
# hanging stage still leaves the others' results.
set -u
OUT=${OUT:-/tmp/mcgen_gpu_out}
VALIDATE_S=${VALIDATE_S:-170}
BENCH_GRM_S=${BENCH_GRM_S:-200}
BENCH_SSC_S=${BENCH_SSC_S:-110}
R=/tmp/mcgen_gpu_results
rm -rf "$R" && mkdir -p "$R" "$OUT"

# Packages the device image lacks travel as wheels in .whl (see /work/.library/device).
if ! python3 -c "import pydantic" 2> /dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
mcgen() { python3 -c "import sys; from mcgen.cli import app; sys.argv[0] = 'mcgen'; app()" "$@"; }

{
    date -u
    nvidia-smi
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$R/environment.txt" 2>&1
cat "$R/environment.txt" | tail -3

# 1. Validation: every spec in parallel (each compiles its own kernels), the GPU shared.
SPECS="grm grm_decay grm_independent grm_log none residual residual_explicit soup ssc"
SHAPES=${SHAPES:-"--shape 2x4096x4x64x64 --shape 2x4096x4x128x128"}
start=$(date +%s)
for s in $SPECS; do
    timeout "$VALIDATE_S" bash -c "$(declare -f mcgen); mcgen validate specs/$s.yaml --backend triton \
        --dtype float32 --dtype bfloat16 $SHAPES --json" > "$R/validate_$s.json" 2> "$R/validate_$s.err" &
done
# The attention form of the cached reads (no spec in specs/ picks it at its own T).
mkdir -p /tmp/attention
for s in grm ssc; do
    python3 - "$s" <<'PY'
import sys, yaml
name = sys.argv[1]
spec = yaml.safe_load(open(f"specs/{name}.yaml"))
spec.setdefault("compute", {})["read_form"] = "attention"
yaml.safe_dump(spec, open(f"/tmp/attention/{name}.yaml", "w"), sort_keys=False)
PY
    mcgen build "/tmp/attention/$s.yaml" --out /tmp/attention/gen > /dev/null
    timeout "$VALIDATE_S" bash -c "$(declare -f mcgen); mcgen validate /tmp/attention/$s.yaml \
        --package /tmp/attention/gen/$s --backend triton --dtype float32 --dtype bfloat16 $SHAPES --json" \
        > "$R/validate_${s}_attention.json" 2> "$R/validate_${s}_attention.err" &
done
wait
echo "validation: $(( $(date +%s) - start )) s"

# 2. Benchmarks, one at a time (nothing else on the GPU while timing).
bench() {
    local name=$1; shift
    local limit=$1; shift
    local t0=$(date +%s)
    timeout "$limit" bash -c "$(declare -f mcgen); mcgen bench $* --out $R --name $name" > "$R/$name.log" 2>&1
    echo "$name: rc $? in $(( $(date +%s) - t0 )) s"
}
bench gpu_t_sweep_grm "$BENCH_GRM_S" specs/grm.yaml --segment-length 256 --segment-length 1024 \
    --provider generated-triton --provider generated-torch --provider naive --provider sdpa
bench gpu_t_sweep_ssc "$BENCH_SSC_S" specs/ssc.yaml \
    --provider generated-triton --provider generated-torch --provider sdpa

tar czf "$OUT/results.tgz" -C "$R" .
python3 benchmarks/gpu_summary.py "$R"
