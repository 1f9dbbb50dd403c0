#!/usr/bin/env bash
# The fast-kernel measurement in one device call (at most 8 minutes on an H100, compiles
# included): each timed package is first validated on the card against the fp64 reference
# at T = 4096, then `mcgen bench` times fwd and fwd+bwd (do_bench medians) of GRM C=256,
# GRM C=1024, SSC k=4 C=256 and GRM C=256 over gated_delta at 1 x 32768, 4 x 8192 and
# 16 x 2048 (H=16, K=V=128, bf16) beside SDPA, flash-linear-attention's chunk_linear_attn
# and chunk_gated_delta_rule (fla 0.6.0 refuses the gated backward on Hopper with triton
# < 3.7.1: its fwd+bwd rows then say so) and the naive einsum GRM, with peak memory. Results: $OUT/gpu_perf.tgz (rows, speedups, plots, logs); a table last.
#
#   bash benchmarks/gpu_perf.sh            # on the card, from the repository root
#   bash benchmarks/gpu_perf.sh --dry-run  # anywhere, no GPU: build the packages, compile
#                                          # their kernels for sm_90 (mcgen inspect --kernels),
#                                          # print the predicted times and the time plan
#
# The card lacks some packages (pydantic, optuna, fla-core, ...): they travel as wheels in
# .whl (see the device tool's README; `benchmarks/gpu_wheels.sh` downloads them).
set -u
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT=${OUT:-/tmp/mcgen_gpu_out}
VALIDATE_S=${VALIDATE_S:-150}  # the validation stage's limit (seconds)
BENCH_S=${BENCH_S:-300}        # the benchmark stage's limit (seconds)
SHAPE=1x32768x16x128x128       # the benchmark's largest shape: what the kernels are built for
R=/tmp/mcgen_gpu_perf
rm -rf "$R" && mkdir -p "$R/specs" "$OUT"

source benchmarks/gpu_env.sh  # wheels the card lacks, and `mcgen`

# The three timed variants, at the benchmark's sizes.
python3 - "$R/specs" <<'PY'
import sys
from pathlib import Path

import yaml

out = Path(sys.argv[1])
variants = (
    ("grm256", "grm", 256),
    ("grm1024", "grm", 1024),
    ("ssc256", "ssc", 256),
    ("gdn256", "grm_gated_delta", 256),
)
for name, source, length in variants:
    spec = yaml.safe_load(Path(f"specs/{source}.yaml").read_text())
    spec["name"] = name
    spec["memory"].update(heads=16, key_dim=128, value_dim=128)
    spec["cache"]["segments"]["length"] = length
    spec["layer"]["d_model"] = 2048
    (out / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
PY
VARIANTS="grm256 grm1024 ssc256 gdn256"
mcgen build $(for v in $VARIANTS; do echo "$R/specs/$v.yaml"; done) --out "$R/gen" > /dev/null || exit 1

if [ "$DRY_RUN" = 1 ]; then
    # What the compiled kernels predict (roofline on an H100), and what the run will cost.
    start=$(date +%s)
    for v in $VARIANTS; do
        mcgen inspect "$R/specs/$v.yaml" --kernels --arch sm_90 --shape "$SHAPE" \
            --dtype bfloat16 --card h100 | tee "$R/kernels_$v.txt" || exit 1
    done
    compiled=$(( $(date +%s) - start ))
    # 4 variants x 2 dtypes validated in parallel (a compile each, then the fp64 ladder);
    # the bench: 2 modes x 3 shapes x (4 generated + naive + SDPA + 2 fla) timings, about
    # 3 s each with do_bench's warm-up, plus each package's compile once per dtype.
    echo "plan: kernels compiled here in ${compiled} s (2 cores); on the card budget" \
        "validation ${VALIDATE_S} s + bench ${BENCH_S} s = $(( VALIDATE_S + BENCH_S )) s of 480 s"
    exit 0
fi

{
    date -u
    nvidia-smi
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 -c "import fla; print('fla', fla.__version__)" 2>&1
} > "$R/environment.txt" 2>&1
tail -2 "$R/environment.txt"

validate_one() {  # VARIANT DTYPE
    timeout "$VALIDATE_S" bash -c "mcgen validate $R/specs/$1.yaml --package $R/gen/$1 \
        --backend triton --dtype $2 --shape 1x4096x16x128x128 --json" \
        > "$R/validate_$1_$2.json" 2> "$R/validate_$1_$2.err"
    echo "validate $1 $2: rc $?"
}
export -f validate_one
export R VALIDATE_S
start=$(date +%s)
for v in $VARIANTS; do for dtype in bfloat16 float32; do echo "$v $dtype"; done; done \
    | xargs -P 8 -L 1 bash -c 'validate_one "$@"' _
echo "validation: $(( $(date +%s) - start )) s"

# Only packages that passed on the card are timed.
timed=""
for v in $VARIANTS; do
    if grep -q '"passed": true' "$R/validate_${v}_bfloat16.json" 2> /dev/null; then
        timed="$timed $R/specs/$v.yaml"
    else
        echo "NOT TIMED: $v failed its validation on the card (see validate_${v}_bfloat16.*)"
    fi
done
start=$(date +%s)
if [ -n "$timed" ]; then
    timeout "$BENCH_S" bash -c "mcgen bench $timed --seq-len 2048 --seq-len 8192 \
        --seq-len 32768 --tokens 32768 --heads 16 --key-dim 128 --value-dim 128 --dtype bf16 \
        --provider generated-triton --provider naive --provider sdpa --provider fla \
        --provider fla-gated-delta \
        --out $R --name gpu_perf" > "$R/bench.log" 2>&1
    echo "bench: rc $? in $(( $(date +%s) - start )) s"
fi
tar czf "$OUT/gpu_perf.tgz" -C "$R" .
cp "$R/gpu_perf.csv" "$R/gpu_perf_speedups.md" "$OUT/" 2> /dev/null
tail -40 "$R/bench.log"
