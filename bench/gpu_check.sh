#!/usr/bin/env bash
# Every GPU check of clipcache in one run, on a fresh NVIDIA machine that has PyTorch but no network.
#
#   bench/gpu_check.sh download [WHEELS]   # here, with network: fetch the wheels the GPU machine lacks
#   bench/gpu_check.sh install [WHEELS]    # there: install them (only this, where they must come in parts)
#   bench/gpu_check.sh [RESULTS] [WHEELS]  # there: install the wheels, run the GPU tests, ingest the demo
#                                          # set with each GPU decoder, run the quick bench
#
# WHEELS defaults to .whl (add `/.whl/` to .git/info/exclude), RESULTS to results/gpu-check. The wheels come
# to about 70 MB (PyAV 36, PyNvVideoCodec 27); where one transfer carries less, split them over two folders,
# run `install` with the first and the check with the second. Everything the check prints and writes lands
# in RESULTS: versions.txt, nvidia-smi.txt, tests.log, ingest-*.log, bench.log and the bench's JSON and
# markdown.
set -uo pipefail

PYTHON=${PYTHON:-python3}
SITE=/tmp/clipcache-site
# What a PyTorch image usually lacks for the GPU checks. DALI's wheel (about 200 MB) only with DALI=1.
WANTED="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c av==18.1.0 pynvvideocodec"

install() {
    if compgen -G "$1/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$1"/*.whl
    fi
}

if [[ "${1:-}" == download ]]; then
    wheels=${2:-.whl}
    extra=$([[ "${DALI:-0}" == 1 ]] && echo "nvidia-dali-cuda130")
    for name in $WANTED $extra; do
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$wheels" "$name" || exit 1
    done
    du -sh "$wheels"
    exit 0
fi

if [[ "${1:-}" == install ]]; then
    install "${2:-.whl}"
    exit $?
fi

results=${1:-results/gpu-check}
mkdir -p "$results"
install "${2:-.whl}" || exit 1
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

nvidia-smi >"$results/nvidia-smi.txt" 2>&1
"$PYTHON" - >"$results/versions.txt" 2>&1 <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
for name in ("zarr", "av", "decord", "PyNvVideoCodec", "nvidia.dali", "optuna", "pytorch_grad_cam", "accelerate", "timm"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:
        print(name, "missing:", error)
from ingest.decoders import DECODERS, choose, unavailable
print(choose("auto")[1])
for name in DECODERS:
    print(name, unavailable(name) or "works here")
EOF
cat "$results/versions.txt"

status=0
echo "== GPU tests"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$results/tests.log" || status=1

echo "== demo ingest with each GPU decoder"
demo=/tmp/clipcache-demo
rm -rf "$demo"
"$PYTHON" -m ingest make-demo --out "$demo/data" >"$results/make-demo.log" 2>&1 || status=1
for decoder in pyav nvdec dali; do
    "$PYTHON" -m ingest build-cache --data-root "$demo/data" --out "$demo/$decoder.zarr" --decoder "$decoder" \
        >"$results/ingest-$decoder.log" 2>&1
    code=$?
    grep -v '%|' "$results/ingest-$decoder.log"
    # A decoder missing here is reported, not a failure; one that is here and fails is.
    if ((code != 0)) && ! grep -q "sees none here\|is not installed" "$results/ingest-$decoder.log"; then
        status=1
    fi
done

echo "== quick bench"
"$PYTHON" -m bench run --demo --quick --out "$results" --markdown "$results/RESULTS.md" 2>&1 \
    | tee "$results/bench.log" | grep -v '%|' || status=1
exit $status
