#!/usr/bin/env bash
# Every GPU check in one call on a lent GPU machine (the `device` tool; see the shared GPU
# recipe): the `gpu`-marked tests, every rule's speed (`aggregation_speed.py --device cuda`)
# and the real path from Flower replies to the model with our strategies aggregating on
# CUDA (`strategy_overhead.py` and `scaling.py --device cuda`). Each step has its own time
# limit and log, so one that fails or stalls leaves the others' results; tables and logs
# go to $OUT (default: gpu-results/).
#
# Here first: `bash ../shared/gpu/fetch_wheels.sh`; then `run` with carry [".whl"] and
# the command `bash scripts/gpu_checks.sh`.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image has torch but not flwr
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD/.site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/device.txt"

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, note its status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}

# The limits add up to 570 s, under the tool's 600 s a call.
step tests 100 python3 -m pytest -q -m gpu -p no:cacheprovider
step aggregation_speed 170 python3 -m benchmarks.aggregation_speed --device cuda \
  --n 16 64 --p 4000000 --detox-n 30 --out "$OUT/aggregation_speed_cuda.md"
step strategy_overhead 150 python3 -m benchmarks.strategy_overhead --device cuda --repeats 3
step scaling 150 python3 -m benchmarks.scaling --device cuda --clients 100 500 --repeats 2 \
  --strategies "flower FedAvg" Mean Krum FlagAggregator CTMA Median
cp benchmarks/results/*cuda* "$OUT"/ 2>/dev/null
tail -n 3 "$OUT"/*.log
