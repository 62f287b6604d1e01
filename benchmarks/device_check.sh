#!/bin/sh
# benchmarks.device_check on the GPU machine (JAX with CUDA, Python 3.12, no TensorFlow, no network).
# The wheels Keras needs beyond JAX travel in benchmarks/device_wheels/ (`make device-wheels` downloads them here;
# carry that folder with the tree); pip installs from them alone, skipping what the machine already has.
# DEVICE_WHEELS names another folder of wheels. Writes benchmarks/results/device.md and device.json (and copies
# them into $OUT when it is set, as on the device machine).
#   sh benchmarks/device_check.sh [--lengths=8192,16384,32768,65536] [--budget_s=420]
set -eu
cd "$(dirname "$0")/.."
# A venv that sees the machine's packages (JAX, numpy), so pip adds only what is missing, from the wheels alone.
wheels="${DEVICE_WHEELS:-benchmarks/device_wheels}"
venv="${TMPDIR:-/tmp}/zoo_device_venv"
python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install --quiet --no-index --find-links "$wheels" keras gin-config 2>/dev/null \
    || { echo "error: could not install keras and gin-config from $wheels (make device-wheels)" >&2; exit 1; }
PYTHONPATH="$PWD" KERAS_BACKEND=jax "$venv/bin/python" -m benchmarks.device_check "$@"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/device.md benchmarks/results/device.json "$OUT"/; fi
