#!/usr/bin/env bash
# The paper study one step up (search/paper_gpu.yaml) in one device call: 18 trials on
# the lent GPU, 8 worker processes sharing it, no trial started after STUDY_S seconds,
# then the grid report. Everything lands in $OUT/study.tgz (the journal, so a later call
# or this machine can resume or report it; logs; grid.md and its plots).
#
#   bash benchmarks/gpu_study.sh                  # on a CUDA machine, from the repo root
#   STUDY_S=120 WORKERS=4 bash benchmarks/gpu_study.sh
#
# Carry the wheels the card lacks (benchmarks/gpu_wheels.sh: pydantic, optuna, ...) in
# .whl. Prepared on the CPU machine (2-core Intel Xeon, train.device auto -> cpu):
# `OUT=/tmp/gpu_dry STEPS=2 WORKERS=2 STUDY_S=600 bash benchmarks/gpu_study.sh` ran the
# grid (data, every candidate built, trained 2 steps, evaluated at 256 and 512 tokens)
# and the report in 8.0 min beside a running study, rc 0. On the card: run it with the
# device tool's timeout_s 540; trials still running then are lost, the journal is not.
set -u
OUT=${OUT:-/tmp/mcgen_gpu_out}
STUDY_S=${STUDY_S:-300}
WORKERS=${WORKERS:-8}
RUNS=/tmp/mcgen_gpu_runs
SPACE=search/paper_gpu.yaml
rm -rf "$RUNS" && mkdir -p "$RUNS" "$OUT"

source benchmarks/gpu_env.sh  # wheels the card lacks, and `mcgen`

if [ -n "${STEPS:-}" ]; then  # a dry run: the same space with fewer steps
    sed -e "s/^  steps: .*/  steps: $STEPS/" -e "s/^  eval_every: .*/  eval_every: $STEPS/" \
        -e "/^  plateau:/d" "$SPACE" > "$RUNS/paper_gpu.yaml"
    SPACE="$RUNS/paper_gpu.yaml"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2> /dev/null || echo "no GPU"
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$RUNS/environment.txt" 2>&1
cat "$RUNS/environment.txt"

start=$(date +%s)
mcgen search run "$SPACE" --workers "$WORKERS" --trials 18 --timeout "$STUDY_S" \
    --runs "$RUNS" > "$RUNS/search.log" 2>&1
echo "search: rc $? in $(($(date +%s) - start)) s"
tail -n 3 "$RUNS/search.log"
mcgen search report paper_gpu --runs "$RUNS" > "$RUNS/report.log" 2>&1
echo "report: rc $?"
tar -czf "$OUT/study.tgz" -C "$RUNS" .
grep -A 25 "^| base" "$RUNS/paper_gpu/grid.md" 2> /dev/null | head -n 22
