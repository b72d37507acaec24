#!/usr/bin/env bash
# The lent GPU machine (no network), from the repository root, after the stage folders made by
# `bash ../shared/gpu/stage.sh ../shared/gpu/vllm-gpu.txt ../shared/gpu/quantize-gpu.txt
# cluster/gpu/project-gpu.txt` and `bash cluster/gpu/stage-assets.sh` (and, for GPTQModel,
# `bash cluster/gpu/stage-gptqmodel.sh`) were collected there one call each (`install.sh collect .stageN`).
#
#   bash cluster/gpu/run.sh SECONDS     the GPU sweep for at most SECONDS (SPEC=... picks another spec
#                                       than h200-smollm2.yaml; SIGINT at the limit: finished cells are
#                                       kept, a rerun resumes)
#   bash cluster/gpu/run.sh bench       vLLM's own `vllm bench throughput` on the bf16 model (BENCH_MODEL=...:
#                                       another than SmolLM2), in the config of the sweep's throughput metric
#                                       (256 x 128 in / 128 out)
#   bash cluster/gpu/run.sh compare     quantmatrix's served client and `vllm bench serve` on one `vllm serve`
#                                       (cluster/gpu/served_compare.py; COMPARE_ARGS=... its options,
#                                       COMPARE_MODEL=... another model than SmolLM2), then `bench`
#                                       (COMPARE_ONLY=1: not)
#   bash cluster/gpu/run.sh llama7b     the 7B-shape random Llama of h200-llama7b.yaml (make_llama7b.py)
#   bash cluster/gpu/run.sh models      the builtin models converted from their GGUF files once per machine,
#                                       in parallel (so no cell's wall time carries a conversion); with
#                                       LLAMA7B=DIR the 7B of `llama7b` too
#   bash cluster/gpu/run.sh tests       the GPU-marked tests, each file in the environment it needs
#                                       (tests-quantize / tests-serve: one of the two; TESTS_K=... a -k)
# Every mode installs the wheel sets first (once per machine): the stage folders of
# `../shared/gpu/stage.sh` (vLLM, llm-compressor, cluster/gpu/project-gpu.txt) and of
# `cluster/gpu/stage-assets.sh` (the corpora's evals package, required), collected one call each.
#
# Three environments, as users run them: the driver (Ray, DuckDB, the CLI), the quantize
# stage (llm-compressor, compressed-tensors 0.19) and the serve stage (vLLM, compressed-tensors
# 0.17). The spec's per-stage runtime_env gives each Ray worker its own PYTHONPATH.
set -u -o pipefail      # a mode's status is its command's, not that of the tee/grep it is piped through
REPO=$(pwd)
SITE_V=/tmp/site SITE_Q=/tmp/site-q SITE_P=/tmp/site-p SITE_G=/tmp/site-g
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export QMX_CACHE=/tmp/qmx-cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
export PATH=$PATH:$SITE_G/bin   # ninja, for GPTQModel's JIT kernel builds, where the image has none

install() {
  [ -f /tmp/qmx-installed ] && return 0
  local inst
  inst=$(ls .stage*/install.sh | tail -1)
  # the corpora's package (a slim evals wheel, cluster/gpu/stage-assets.sh) goes beside the driver's set
  [ -f "${WHEEL_POOL:-/tmp/wheelpool}/assets-gpu.files" ] \
    || { echo "no assets-gpu set collected: run cluster/gpu/stage-assets.sh here and collect .stage-assets there"; return 1; }
  bash "$inst" install vllm-gpu $SITE_V && bash "$inst" install quantize-gpu $SITE_Q \
    && bash "$inst" install project-gpu $SITE_P && bash "$inst" install assets-gpu $SITE_P && touch /tmp/qmx-installed \
    && { install_gptqmodel || echo "GPTQModel set not installed: its cells and GPU cases will say so"; }
}

# GPTQModel, when its stage folder (cluster/gpu/stage-gptqmodel.sh) was collected, goes to a folder
# of its own: the quantize stage needs it to quantize, and the serve stage for hf cells of GPTQ
# checkpoints (transformers loads those through optimum + GPTQModel's kernels). pypcre, a C extension
# published as source only, is built here first.
install_gptqmodel() {
  local pool=${WHEEL_POOL:-/tmp/wheelpool}
  [ -f "$pool/gptqmodel-gpu.files" ] || { echo "no GPTQModel set collected: its GPU cases skip"; return 0; }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site-build "$pool"/setuptools-*.whl "$pool"/wheel-*.whl \
    && PYTHONPATH=/tmp/site-build python3 -m pip wheel -q --no-index --no-deps --no-build-isolation \
      -w "$pool" "$pool"/pypcre-*.tar.gz \
    && { grep -q '^pypcre-' "$pool/gptqmodel-gpu.files" || (cd "$pool" && ls pypcre-*.whl) >> "$pool/gptqmodel-gpu.files"; } \
    && bash "$(ls .stage*/install.sh | tail -1)" install gptqmodel-gpu $SITE_G
}

install || { echo "install failed"; exit 1; }
# vLLM's compile caches and FlashInfer's JIT kernels in the folder every cell's server uses on this node
cache_env=$(PYTHONPATH=$SITE_P:$REPO python3 -c "from jobs.serving.vllm_server import node_cache_env
for k, v in node_cache_env().items(): print(f'export {k}={v}')") || { echo "the node's cache folders: failed"; exit 1; }
eval "$cache_env"
case ${1:-} in
  bench)
    # BENCH_MODEL (default the SmolLM2 builtin), materialized from its GGUF if no earlier run did it
    model=$(PYTHONPATH=$SITE_P:$REPO python3 -c "import sys; from jobs.models import materialize
print(materialize(sys.argv[1], None, None))" "${BENCH_MODEL:-builtin:smollm2-135m-instruct}" | tail -1)
    # the sweep's engine arguments (jobs/engines/vllm.py) and its warm-up of 8 prompts
    PYTHONPATH=$SITE_V:$SITE_P timeout "${BENCH_TIMEOUT:-150}" python3 -m vllm.entrypoints.cli.main bench throughput \
      --model "$model" --dataset-name random --random-input-len 128 --random-output-len 128 --num-prompts 256 \
      --num-warmups 8 --dtype bfloat16 --max-model-len 4096 --gpu-memory-utilization 0.85 --max-logprobs 64 \
      --seed 0 --output-json "$OUT/vllm_bench_throughput.json" 2>&1 | tee "$OUT/vllm_bench_throughput.log" \
      | grep -E "^Throughput|^Total num"
    ;;
  compare)
    # quantmatrix's served client beside `vllm bench serve` on one standalone `vllm serve` (the sweep's
    # engine arguments), then `vllm bench throughput` as in `bench`: run it right after a sweep
    # COMPARE_MODEL (default the SmolLM2 builtin), materialized from its GGUF if no earlier run did it
    model=$(PYTHONPATH=$SITE_P:$REPO python3 -c "import sys; from jobs.models import materialize
print(materialize(sys.argv[1], None, None))" "${COMPARE_MODEL:-builtin:smollm2-135m-instruct}" | tail -1)
    PYTHONPATH=$SITE_V:$SITE_P:$REPO timeout "${COMPARE_TIMEOUT:-400}" python3 cluster/gpu/served_compare.py \
      "$model" "$OUT/compare" ${COMPARE_ARGS:-} 2>&1 | tee "$OUT/served_compare.log" | grep --line-buffered -E "^\||vllm serve up"   # line by line: a poll shows the start
    rc=$?
    [ -n "${COMPARE_ONLY:-}" ] && exit $rc
    exec bash "$0" bench
    ;;
  llama7b)
    PYTHONPATH=$SITE_P:$REPO python3 cluster/gpu/make_llama7b.py /tmp/models/llama7b
    ;;
  models)
    # LLAMA7B=DIR: the 7B-shape random Llama written there meanwhile (make_llama7b.py, GPU + disk)
    pids=()
    [ -z "${LLAMA7B:-}" ] || { PYTHONPATH=$SITE_P:$REPO python3 cluster/gpu/make_llama7b.py "$LLAMA7B" & pids+=($!); }
    for m in ${MODELS:-builtin:smollm2-135m-instruct builtin:gemma3-270m}; do
      PYTHONPATH=$SITE_P:$REPO python3 -c "import sys, time; t = time.perf_counter()
from jobs.models import materialize; print(sys.argv[1], materialize(sys.argv[1], None, None), f'{time.perf_counter() - t:.1f} s')" "$m" &
      pids+=($!)
    done
    rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done     # one failed build fails the mode
    exit $rc
    ;;
  tests|tests-quantize|tests-serve)
    [ "$1" = tests-serve ] || PYTHONPATH=$SITE_Q:$SITE_G:$SITE_P:$REPO timeout "${TESTS_Q_TIMEOUT:-150}" python3 -m pytest \
      -q -s -m gpu -p no:cacheprovider -k "${TESTS_K:-}" tests/test_gpu_backends.py 2>&1 | tee "$OUT/gpu_tests_quantize.log" \
      | grep -E "GPU |passed|failed|skipped|Error"
    [ "$1" = tests-quantize ] || PYTHONPATH=$SITE_V:$SITE_P:$REPO timeout "${TESTS_V_TIMEOUT:-330}" python3 -m pytest \
      -q -s -m gpu -p no:cacheprovider tests/test_gpu_engines.py 2>&1 | tee "$OUT/gpu_tests_vllm.log" \
      | grep -E "GPU |passed|failed|skipped|Error"
    ;;
  *)
    sed -e "s|@REPO@|$REPO|g; s|@SITE_V@|$SITE_V|g; s|@SITE_Q@|$SITE_Q|g; s|@SITE_P@|$SITE_P|g; s|@SITE_G@|$SITE_G|g" \
      "${SPEC:-cluster/gpu/h200-smollm2.yaml}" > /tmp/spec.yaml
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
    # the driver needs neither llm-compressor nor vLLM: the spec's runtime_env gives each stage its own
    PYTHONPATH=$SITE_P:$REPO timeout -s INT -k 30 "${1:-500}" python3 -m cluster.cli sweep /tmp/spec.yaml \
      --results /tmp/results 2>&1 | tee -a "$OUT/sweep.log" | grep -v "━" | tail -25
    rc=$?           # the sweep's: 130 when the time cap interrupted it, 1 when a cell failed
    PYTHONPATH=$SITE_P:$REPO python3 -m cluster.cli leaderboard --results /tmp/results > "$OUT/leaderboard.md" 2>&1
    tar czf "$OUT/results.tar.gz" -C /tmp results
    cp /tmp/qmx-cache/artifacts/builds.jsonl "$OUT/" 2>/dev/null
    head -30 "$OUT/leaderboard.md"
    exit $rc
    ;;
esac
