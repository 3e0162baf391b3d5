#!/usr/bin/env bash
# The prepared GPU run: every GPU figure geomim needs, in one go, in under 8 minutes.
#
#   bash benchmarks/gpu.sh             # on a CUDA machine; results under $OUT
#   bash benchmarks/gpu.sh --dry-run   # the same steps on the CPU at tiny sizes (in the tests)
#
# Steps, in order of importance (each is logged, timed and recorded, and a failing step does not
# stop the ones after it; a global deadline keeps the whole run under DEADLINE_S seconds):
#   install       the project (no index: the machine has torch, timm, ... already), plus any
#                 wheels carried in .whl/ (e.g. an spconv-cuXXX build for the teacher check)
#   check         python -m geomim.check --device cuda --json     (every kernel vs its reference)
#   tests         python -m pytest -q -k "cuda or gpu" tests/kernels (the CUDA tests)
#   kernels-fp32  benchmarks/kernels.py                            (TFLOP/s, GB/s vs the peaks)
#   pretrain      benchmarks/pretrain_cuda.py                      (base step bf16, batch 1..max)
#   backbone      benchmarks/backbone.py --device cuda --batch 4   (images/s fp32/tf32/bf16)
#   nccl          torchrun (1 process, NCCL) python -m geomim.train on random rig samples
#   kernels-bf16  benchmarks/kernels.py --dtype bfloat16
#   deterministic benchmarks/deterministic_runs.py                 (train.deterministic bit-exact?)
# Output: $OUT/{check,kernels-fp32,kernels-bf16,pretrain,backbone,deterministic,steps}.json and
# $OUT/gpu.log
# (8 files at most come back from the device tool; everything else goes to a temp folder).
#
# A rerun of part of it: SKIP="tests backbone" leaves those steps out; CHECK_ARGS and
# KERNELS_ARGS are added to the check's and the kernel benchmarks' arguments, e.g.
#   SKIP=backbone CHECK_ARGS="--backends triton sdpa reference" bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2
    exit 2
fi
OUT="${OUT:-benchmarks/results/gpu}"
PYTHON="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-470}"
SKIP="${SKIP:-}"
read -ra CHECK_ARGS <<<"${CHECK_ARGS:-}"
read -ra KERNELS_ARGS <<<"${KERNELS_ARGS:-}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu.log"
SCRATCH="$(mktemp -d)"
STEPS="$SCRATCH/steps.jsonl"
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

# run NAME LIMIT_S COMMAND...: log it, time it, record it; never stop the script
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE_S - ($(date +%s) - START)))
    if [[ " $SKIP " == *" $name "* ]]; then
        echo "{\"step\": \"$name\", \"rc\": 0, \"seconds\": 0, \"note\": \"skipped (SKIP)\"}" >>"$STEPS"
        echo "== $name: skipped (SKIP)" | tee -a "$LOG"
        return
    fi
    if ((left < 10)); then
        echo "{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"note\": \"deadline\"}" >>"$STEPS"
        echo "== $name: skipped, the ${DEADLINE_S} s deadline is reached" | tee -a "$LOG"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local begin rc
    begin=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - begin))}" >>"$STEPS"
    echo "== $name: exit $rc after $(($(date +%s) - begin)) s" | tee -a "$LOG"
}

install() {  # run through `bash -c` (timeout runs programs, not functions)
    if ((DRY_RUN)); then  # the same step, installing nothing into the caller's environment
        "$PYTHON" -c "import geomim, torch; print('geomim', geomim.__version__)"
        return
    fi
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation .whl/*.whl || return 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        || echo "pip could not install the project: it runs from PYTHONPATH=$PWD"
    "$PYTHON" -c "import geomim, torch; print('geomim', geomim.__version__, 'torch', \
torch.__version__, 'cuda', torch.cuda.is_available())"
}
export DRY_RUN PYTHON
INSTALL="$(declare -f install); install"

nvidia-smi >>"$LOG" 2>&1 || true
if ((DRY_RUN)); then
    DEVICE=cpu
    run install 60 bash -c "$INSTALL"
    run check 120 "$PYTHON" -m geomim.check --device cpu --quick --skip-teacher \
        --json "$OUT/check.json" "${CHECK_ARGS[@]}"
    run tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only -k "cuda or gpu" \
        tests/kernels
    run kernels-fp32 120 "$PYTHON" benchmarks/kernels.py --device cpu --quick --skip-flex \
        --repeats 1 --warmup 0 --out "$OUT/kernels-fp32.json" "${KERNELS_ARGS[@]}"
    # bf16 as on the GPU where this CPU has it natively (emulated bf16 is ~100x slower)
    PRECISION=$("$PYTHON" -c "from geomim.check.system import native_cpu_bf16 as n; \
print('bf16' if n() else 'fp32')")
    run pretrain 180 "$PYTHON" benchmarks/pretrain_cuda.py --device cpu --size tiny \
        --precision "$PRECISION" --max-batch 2 --repeats 1 --warmup 0 --points 5000 --out "$OUT/pretrain.json"
    run backbone 120 "$PYTHON" benchmarks/backbone.py --device cpu --model geomim_test \
        --height 64 --width 176 --repeats 1 --warmup 0 --skip-bf16 --out "$OUT/backbone.json"
    run nccl 180 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 \
        -m geomim.train --config tiny_synthetic data.source=rig data.rig_samples=4 \
        data.workers=0 train.max_steps=2 train.device=cpu "run_dir=$SCRATCH/run"
    run kernels-bf16 120 "$PYTHON" benchmarks/kernels.py --device cpu --quick --skip-flex \
        --dtype bfloat16 --repeats 1 --warmup 0 --ops attention --out "$OUT/kernels-bf16.json" \
        "${KERNELS_ARGS[@]}"
    run deterministic 120 "$PYTHON" benchmarks/deterministic_runs.py --device cpu --steps 2 \
        --out "$OUT/deterministic.json"
else
    DEVICE=cuda
    run install 60 bash -c "$INSTALL"
    run check 200 "$PYTHON" -m geomim.check --device cuda --json "$OUT/check.json" \
        "${CHECK_ARGS[@]}"
    run tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
        -k "cuda or gpu" tests/kernels
    run kernels-fp32 90 "$PYTHON" benchmarks/kernels.py --device cuda --out "$OUT/kernels-fp32.json" \
        "${KERNELS_ARGS[@]}"
    run pretrain 120 "$PYTHON" benchmarks/pretrain_cuda.py --device cuda --out "$OUT/pretrain.json"
    run backbone 60 "$PYTHON" benchmarks/backbone.py --device cuda --batch 4 \
        --out "$OUT/backbone.json"
    run nccl 90 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 \
        -m geomim.train --config tiny_synthetic data.source=rig data.rig_samples=16 \
        data.workers=2 train.max_steps=20 train.device=cuda train.precision=bf16 \
        "run_dir=$SCRATCH/run"
    run kernels-bf16 75 "$PYTHON" benchmarks/kernels.py --device cuda --dtype bfloat16 \
        --ops attention cross_view --out "$OUT/kernels-bf16.json" "${KERNELS_ARGS[@]}"
    run deterministic 90 "$PYTHON" benchmarks/deterministic_runs.py --device cuda --steps 4 \
        --precision bf16 --out "$OUT/deterministic.json"
fi

"$PYTHON" - "$STEPS" "$OUT/steps.json" "$DEVICE" "$(($(date +%s) - START))" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
report = {"device": sys.argv[3], "seconds": int(sys.argv[4]), "steps": steps}
report["failed"] = [s["step"] for s in steps if s["rc"] != 0]
open(sys.argv[2], "w").write(json.dumps(report, indent=2) + "\n")
for s in steps:
    print(f"{s['step']:<14} exit {s['rc']}  {s['seconds']:>4} s  {s.get('note', '')}")
print(f"total {report['seconds']} s; failed: {report['failed'] or 'none'}")
sys.exit(1 if report["failed"] else 0)
EOF
status=$?
rm -rf "$SCRATCH" "$STEPS"
exit $status
