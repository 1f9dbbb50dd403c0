#!/usr/bin/env bash
# One GPU lease in one call: the environment, `mcgen validate --backend triton` for every
# linear and decay spec at B = 2, T = 4096, H = 4, K = V = 64 and 128 (both read forms),
# then the benchmark sweeps of docs/benchmarks/README.md. Everything lands in
# $OUT/results.tgz (the device tool brings back at
# most 8 files) and a summary is printed last.
#
#   bash benchmarks/gpu_session.sh                  # on a CUDA machine, from the repo root
#   STAGES=bench BENCH_S=500 bash benchmarks/gpu_session.sh
#
# Stages have their own time limits (seconds; environment variables) so that a slow or
# hanging stage still leaves the others' results; the benchmark writes its rows as it
# goes. Measured on an H200 (2026-11-26): validation of 11 packages x 2 shapes x 2 dtypes
# takes about 110 s as 44 parallel processes (Triton compiles each package's kernels in
# 45 s); the benchmark's sweep takes about 8 s per step.
set -u
OUT=${OUT:-/tmp/mcgen_gpu_out}
STAGES=${STAGES:-"validate bench"}
VALIDATE_S=${VALIDATE_S:-170}
BENCH_S=${BENCH_S:-300}
SHAPES=${SHAPES:-"2x4096x4x64x64 2x4096x4x128x128"}
SPECS=${SPECS:-"grm grm_decay grm_independent grm_log none residual residual_explicit soup ssc"}
R=/tmp/mcgen_gpu_results
rm -rf "$R" && mkdir -p "$R" "$OUT"

source benchmarks/gpu_env.sh  # wheels the card lacks, and `mcgen`

{
    date -u
    nvidia-smi
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$R/environment.txt" 2>&1
tail -1 "$R/environment.txt"

validate_one() {  # SPEC_FILE PACKAGE_DIR LABEL SHAPE DTYPE
    timeout "$VALIDATE_S" bash -c "mcgen validate $1 --package $2 --backend triton \
        --dtype $5 --shape $4 --json" > "$R/validate_$3_$4_$5.json" 2> "$R/validate_$3_$4_$5.err"
}
export -f validate_one
export R VALIDATE_S

if [[ " $STAGES " == *" validate "* ]]; then
    start=$(date +%s)
    jobs=()
    for s in $SPECS; do
        jobs+=("specs/$s.yaml generated/$s $s")
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
        jobs+=("/tmp/attention/$s.yaml /tmp/attention/gen/$s ${s}_attention")
    done
    # One process per (package, shape, dtype), all at once: compiling dominates, on the CPUs.
    for job in "${jobs[@]}"; do
        for shape in $SHAPES; do
            for dtype in float32 bfloat16; do
                echo "$job $shape $dtype"
            done
        done
    done | xargs -P 64 -L 1 bash -c 'validate_one "$@"' _
    echo "validation: $(( $(date +%s) - start )) s"
fi

if [[ " $STAGES " == *" bench "* ]]; then
    # The sweeps of docs/benchmarks/README.md, one at a time (nothing else on the GPU).
    start=$(date +%s)
    timeout "$BENCH_S" bash -c "mcgen bench specs/grm.yaml specs/ssc.yaml \
        --segment-length 256 --segment-length 1024 --out $R --name gpu_t_sweep" \
        > "$R/gpu_t_sweep.log" 2>&1
    echo "bench: rc $? in $(( $(date +%s) - start )) s"
fi

tar czf "$OUT/results.tgz" -C "$R" .
python3 benchmarks/gpu_summary.py "$R"
