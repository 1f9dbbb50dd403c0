#!/usr/bin/env bash
# The paper study one step up (search/paper_gpu.yaml) in one device call of LIMIT_S
# seconds: its grid on the lent GPU, WORKERS worker processes sharing it, then the grid
# report. Stages, in that order:
#   1. beside the rest: `mcgen validate --backend triton` of the gated delta-rule specs (the
#      study trains gated_delta on those kernels);
#   2. the step time of the slowest candidate (benchmarks/gpu_step_time.py, among those
#      PROBE names), in WORKERS processes at once, as the study's workers share the GPU;
#   3. the study, its steps cut (STEPS=auto) so that its slowest trial ends in time; a trial
#      still running at LIMIT_S - REPORT_S is stopped and left out;
#   4. the report.
# RECURRENCES narrows the space's bases. Everything lands in $OUT/study.tgz (the journal,
# so this machine can report it again; logs; grid.md and its plots); the step time,
# validation and report in $OUT too.
#
#   bash benchmarks/gpu_study.sh                  # on a CUDA machine, from the repo root
#   RECURRENCES="swla gated_delta" PROBE=memory.recurrence=gated_delta LIMIT_S=430 \
#       bash benchmarks/gpu_study.sh              # the bases that train fast there
#   STEPS=2 WORKERS=2 LIMIT_S=900 bash benchmarks/gpu_study.sh    # a dry run, on a CPU
# (the dry run: every candidate built, trained 2 steps and evaluated, and the report, in
# 4.8 min on the 2-core Intel Xeon beside a running study; 2.6 min with RECURRENCES set)
#
# Measured on one H200 (2026-11-29, docs/research/recall_study.md): with 8 processes
# sharing it, a Titans + GRM step at width 128 takes 0.62 s (the deep memories' torch
# backend), a gated delta + GRM step 0.047 s, so the whole grid gets 400 steps in 540 s
# and the two linear bases alone 1500 steps in 430 s.
#
# Carry the wheels the card lacks (benchmarks/gpu_wheels.sh: pydantic, optuna, ...) in
# .whl. On the card: run it with the device tool's timeout_s at LIMIT_S + 30.
set -u
OUT=${OUT:-/tmp/mcgen_gpu_out}
LIMIT_S=${LIMIT_S:-540}     # this script's whole run
REPORT_S=${REPORT_S:-75}    # kept for the search's stop (30 s at most), the report, the archive
WORKERS=${WORKERS:-8}
STEPS=${STEPS:-auto}
PROBE=${PROBE:-memory.recurrence=titans}
RECURRENCES=${RECURRENCES:-}  # e.g. "swla gated_delta" (default: the space's)
RUNS=/tmp/mcgen_gpu_runs
SPACE=$RUNS/paper_gpu.yaml  # search/paper_gpu.yaml, narrowed to RECURRENCES, steps cut
begin=$(date +%s)
elapsed() { echo $(($(date +%s) - begin)); }
rm -rf "$RUNS" && mkdir -p "$RUNS" "$OUT"
cp search/paper_gpu.yaml "$SPACE"
if [ -n "$RECURRENCES" ]; then
    sed -i "s/^  memory.recurrence: .*/  memory.recurrence: [${RECURRENCES// /, }]/" "$SPACE"
fi

source benchmarks/gpu_env.sh  # wheels the card lacks, and `mcgen`

{
    date -u
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null || echo "no GPU"
    python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
} > "$RUNS/environment.txt" 2>&1
cat "$RUNS/environment.txt"

validated=""
if python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    validated="grm_gated_delta grm_delta"
    for spec in $validated; do
        timeout 240 bash -c "mcgen validate specs/$spec.yaml --backend triton \
            --shape 2x1024x4x64x64 --dtype float32 --dtype bfloat16 --json" \
            > "$RUNS/validate_$spec.json" 2> "$RUNS/validate_$spec.err" &
    done
fi

if [ "$STEPS" = auto ]; then
    timeout 150 python3 benchmarks/gpu_step_time.py "$SPACE" --where "$PROBE" \
        --steps 10 --processes "$WORKERS" --json > "$RUNS/step_time.json" 2> "$RUNS/step_time.log"
    echo "step time (at $(elapsed) s): $(cat "$RUNS/step_time.json")"
    # The slowest trial (started first, as the grid orders them) must end by the deadline
    # with time for one more after it; 30 s for the data, the build and the evaluations.
    window=$((LIMIT_S - REPORT_S - $(elapsed)))
    STEPS=$(python3 -c "
import json, sys
per_step = json.load(open('$RUNS/step_time.json'))['slowest_process_seconds_per_step']
steps = int(($window - 30) / 1.3 / per_step) // 100 * 100
print(max(200, min(1500, steps)))" 2> /dev/null || echo 500)
fi
EVAL_EVERY=$(((STEPS / 4 + 49) / 50 * 50))
[ "$EVAL_EVERY" -gt "$STEPS" ] || [ "$EVAL_EVERY" -lt 1 ] && EVAL_EVERY=$STEPS
sed -i -e "s/^  steps: .*/  steps: $STEPS/" -e "s/^  eval_every: .*/  eval_every: $EVAL_EVERY/" \
    -e "/^  plateau:/d" "$SPACE"
# Every distinct candidate and the study's reference trials.
TRIALS=$(python3 -c "
from mcgen.search.space import grid_points, load_space
from mcgen.search.study import reference_points
space = load_space('$SPACE')
print(len(grid_points(space)) + len(reference_points(space)))")
echo "steps $STEPS, evaluated every $EVAL_EVERY; $TRIALS trials"

window=$((LIMIT_S - REPORT_S - $(elapsed)))
start=$(date +%s)
timeout -s TERM -k 40 "$window" bash -c "mcgen search run $SPACE --workers $WORKERS \
    --trials $TRIALS --timeout $((window / 2)) --runs $RUNS" > "$RUNS/search.log" 2>&1
echo "search: rc $? in $(($(date +%s) - start)) s (window $window s)"
tail -n 3 "$RUNS/search.log"
wait  # the validations
[ -n "$validated" ] && python3 benchmarks/gpu_summary.py "$RUNS"  # the validation table
mcgen search report paper_gpu --runs "$RUNS" > "$RUNS/report.log" 2>&1
echo "report: rc $? (at $(elapsed) s)"
tar -czf "$OUT/study.tgz" -C "$RUNS" --exclude=checkpoints --exclude=data --exclude=work .
cp "$RUNS/step_time.json" "$RUNS"/validate_*.json "$RUNS/paper_gpu/grid.md" "$OUT/" 2> /dev/null
grep -A 25 "^| base" "$RUNS/paper_gpu/grid.md" 2> /dev/null | head -n 22
