#!/usr/bin/env bash
# Every GPU check of clipcache in one command, on a fresh NVIDIA machine that has PyTorch but no network.
#
#   bench/gpu_check.sh download   # here, with network: fetch the wheels the GPU machine lacks into $WHEELS
#   bench/gpu_check.sh RESULTS    # there: install them, then run the steps below, highest value first
#   STEPS="bench dali" bench/gpu_check.sh RESULTS   # only these groups (a later call on the same machine
#                                                   # reuses the demo store; on a fresh one it is rebuilt)
#
# Each step runs under `timeout` and writes its log and figures into RESULTS as soon as it ends, with a line
# in RESULTS/steps.tsv (step, exit status, seconds, verdict): a run cut short still returns what it finished.
#   1 env       nvidia-smi, driver, libnvcuvid/libnvidia-encode, versions, which decoders start (env.log)
#   2 ingest    make-demo; a PyAV build on all cores; an nvdec build of the same videos; both compared row
#               by row (compare-nvdec.json/.md: frame indices, mean absolute difference per channel, fallbacks)
#   3 train     accelerate launch train/run.py --model all, 1 epoch, bf16, 224 px; train.features on the GPU;
#               train/run.py --from-features
#   4 tests     pytest -m gpu tests/test_gpu.py
#   5 bench     GPU rows on Celeb-DF-shaped video (942x500, 400 frames): decode and ingest at 1, 7 and 16 videos
#               in flight beside the measured per-engine rate, host-to-device copies, 50-step bf16 data stall
#   6 dali      a DALI build compared like nvdec's, only where DALI is installed
# Without a GPU every step runs at toy sizes and the GPU ones say "skipped: no GPU" (a check of this script).
# The timeouts are ceilings, not estimates (none of this has run on a GPU yet). Where one call may run only
# 10 minutes, run STEPS="env ingest train tests" first and STEPS="bench dali" second, into the same RESULTS;
# a call cut off mid-step still leaves every finished step's results there.
#
# Wheels (pip download for CPython 3.12 manylinux x86_64, measured 2026-11-27), as downloaded -> as `download`
# leaves them (recompressed with LZMA, which pip and zipfile read; PyNvVideoCodec's also stripped of samples,
# benchmarks, FFmpeg's source tarball, its CUDA 12 build and duplicate FFmpeg libraries), in MB:
#   av 18.1.0 35.8 -> 26.8; pynvvideocodec 2.2.4 26.9 -> 3.0; numcodecs 0.16.6 9.3 -> 7.0; zarr 3.1.6 0.3;
#   donfig, google-crc32c 0.06; matplotlib 3.11.2 9.9 -> 8.3 with fonttools 5.4 -> 4.3, kiwisolver 1.5 -> 1.0,
#   contourpy 0.4 -> 0.3, cycler, pyparsing 0.1 (train/run.py draws its reports; matplotlib imports fontTools).
# Total 51.1 MB (48.7 MiB; 89.7 MB as downloaded) beside a 0.4 MB tree: one 64 MiB transfer. `download` fails above it
# (it takes about 3 minutes, mostly LZMA). Not carried: optuna (train/tune.py only), grad-cam (train/explain.py
# only), decord; DALI's wheel (~200 MB) only with DALI=1, and then it does not fit one transfer.
set -uo pipefail

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/clipcache-site}
LIMIT_MIB=64
WANTED="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 av==18.1.0 pynvvideocodec==2.2.4
    matplotlib==3.11.2 contourpy==1.4.0 kiwisolver==1.5.1 cycler==0.12.1 pyparsing==3.3.3 fonttools==4.68.0"

download() {
    mkdir -p "$WHEELS"
    local extra
    extra=$([[ "${DALI:-0}" == 1 ]] && echo "nvidia-dali-cuda130")
    for name in $WANTED $extra; do
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "$name" || return 1
    done
    "$PYTHON" -m bench.wheels repack "$WHEELS"/*.whl || return 1
    local total tree
    total=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    echo "wheels $((total / 1024)) KiB + tree $((tree / 1024)) KiB; one transfer carries $LIMIT_MIB MiB"
    ((total + tree <= LIMIT_MIB * 1024 * 1024)) || { echo "too big for one transfer" >&2; return 1; }
}

install() {
    compgen -G "$WHEELS/*.whl" >/dev/null || return 0
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
    else
        "$PYTHON" -m bench.wheels unpack "$SITE" "$WHEELS"/*.whl  # no pip here: a wheel is a zip
    fi
}

if [[ "${1:-}" == download ]]; then
    download
    exit $?
fi

results=${1:-results/gpu-check}
mkdir -p "$results"
results=$(cd "$results" && pwd)
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
work=${WORK:-/tmp/clipcache-gpu-check}  # kept between runs on one machine: a later group reuses the demo store
mkdir -p "$work"
status=0
[[ -f "$results/steps.tsv" ]] || printf 'step\texit\tseconds\tverdict\n' >"$results/steps.tsv"

# want GROUP: whether STEPS (default: every group, in this order) names it.
want() { [[ " ${STEPS:-env ingest train tests bench dali} " == *" $1 "* ]]; }

# step NAME SECONDS COMMAND...: run it under timeout into RESULTS/NAME.log and record how it ended.
step() {
    local name=$1 limit=$2 started code verdict
    shift 2
    started=$SECONDS
    # bash -c: the command may be one of this script's functions (exported below), which timeout cannot run.
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$results/$name.log" 2>&1
    code=$?
    case $code in
        0) verdict=ok ;;
        124 | 137) verdict="timed out after $limit s" ;;
        *) verdict=failed ;;
    esac
    ((code == 0)) || status=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - started))" "$verdict" >>"$results/steps.tsv"
    echo "== $name: $verdict ($((SECONDS - started)) s)"
    grep -v '%|' "$results/$name.log" | tail -n "${TAIL:-15}"
}

skip() {
    printf '%s\t-\t0\tskipped: %s\n' "$1" "$2" >>"$results/steps.tsv"
    echo "== $1: skipped: $2"
}

gpu=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if ((gpu)); then
    demo=(--identities 16 --frames 48) size=224 frames=16 epochs=1 precision=bf16 loaders=4
else
    demo=(--identities 4 --frames 8 --width 96 --height 64) size=32 frames=4 epochs=1 precision=no loaders=0
fi
export PYTHON WHEELS SITE work size frames
# A store at `size` px holding `frames`-frame clips of the demo videos, built with decoder $2 into $1 (anew).
build() {
    rm -rf "$1"
    "$PYTHON" -m ingest build-cache --data-root "$work/data" --out "$1" --decoder "$2" --size "$size" \
        --frames "$frames" "${@:3}"
}

# The demo videos and their PyAV store, unless an earlier group on this machine made them.
pyav_store() {
    [[ -f "$work/demo.ok" ]] || { rm -rf "$work/data" &&
        step make-demo 300 "$PYTHON" -m ingest make-demo --out "$work/data" "${demo[@]}" && touch "$work/demo.ok"; }
    [[ -f "$work/pyav.ok" ]] || { step ingest-pyav 300 build "$work/pyav.zarr" pyav --workers "$(nproc)" &&
        touch "$work/pyav.ok"; }
}

# A GPU decoder's build of the demo videos, compared row by row with PyAV's.
gpu_build() {
    step "ingest-$1" 300 build "$work/$1.zarr" "$1" --workers 8
    step "compare-$1" 120 "$PYTHON" -m bench.gpu_check compare "$work/pyav.zarr" "$work/$1.zarr" \
        --out "$results/compare-$1"
}

# 1: what this machine is.
env_report() {
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    echo "-- video libraries of the driver"
    ldconfig -p | grep -E 'nvcuvid|nvidia-encode' || echo "none: the container lacks the driver's video capability"
    "$PYTHON" -m bench.gpu_check env
}
export -f install build env_report
step install 300 install
want env && step env 120 env_report

# 2: a PyAV build and an nvdec build of the same videos, compared row by row.
if want ingest; then
    pyav_store
    if ((gpu)); then gpu_build nvdec; else skip ingest-nvdec "no GPU"; fi
fi

# 3: training at 224 px in bf16 on the GPU, then the feature cache and a head trained on it.
if want train; then
    pyav_store
    launch=("$PYTHON" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --dynamo_backend no)
    ((gpu)) && launch+=(--mixed_precision "$precision") || launch+=(--cpu)
    rm -rf "$work/run" "$work/run-features"
    step train-all 400 "${launch[@]}" train/run.py --cache "$work/pyav.zarr" --model all --epochs "$epochs" \
        --frame-size "$size" --mixed-precision "$precision" --out "$work/run" --workers "$loaders"
    cp "$work/run/comparison.md" "$results/" 2>/dev/null
    step features 200 "$PYTHON" -m train.features "$work/pyav.zarr" --backbone resnet18 --frame-size "$size"
    step train-features 200 "$PYTHON" train/run.py --cache "$work/pyav.zarr" --model resnet18 --from-features \
        --epochs "$epochs" --out "$work/run-features" --workers "$loaders"
fi

# 4: the GPU tests (skipped, and saying so, without a GPU).
want tests && step tests 500 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_gpu.py

# 5: the bench's GPU rows.
if want bench && ((gpu)); then
    step bench 560 "$PYTHON" -m bench run --demo --stages decode ingest h2d train --repeat 2 --videos 6 \
        --out "$results/bench" --markdown "$results/bench.md"
elif want bench; then
    pyav_store
    step bench 300 "$PYTHON" -m bench run --data "$work/data" --quick --stages decode h2d --videos 2 \
        --out "$results/bench" --markdown "$results/bench.md"
fi

# 6: DALI, where it is installed.
if want dali && ((gpu)) && "$PYTHON" -c 'import nvidia.dali' 2>/dev/null; then
    pyav_store
    gpu_build dali
elif want dali; then
    skip dali "$( ((gpu)) && echo "DALI is not installed" || echo "no GPU")"
fi

echo "== steps (also $results/steps.tsv)"
column -t -s $'\t' "$results/steps.tsv" 2>/dev/null || cat "$results/steps.tsv"
exit $status
