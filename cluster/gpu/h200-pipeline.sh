#!/usr/bin/env bash
# The H200 session's whole run, detached from the 10-minute call limit (GPU machine, repository root,
# after the stage folders were collected):
#   setsid nohup bash cluster/gpu/h200-pipeline.sh > /tmp/pipe.log 2>&1 < /dev/null &
# The machine is given back once no call has been in flight for ~30 s, and this detached work dies
# with it (2026-12-02: a 496 s step's results lost): send each poll call right after the last one.
# Each step writes its outputs to /tmp/pipe/<step>/ and, when it ends, a line to /tmp/pipe/steps
# (name, exit status, seconds), the flag /tmp/pipe/<step>.ended, and /tmp/pipe/<step>.done only if it
# succeeded (a rerun skips done steps, so a failed or time-capped one runs again); a later call polls
# for the flags and copies /tmp/pipe/ back. Each sweep has a time cap (SIGINT: finished cells are kept,
# a rerun of this script resumes them); all sweeps write one store, /tmp/results.
# STEPS picks the steps (default: issue 18's one unmet figure, client against `vllm bench serve` at c=1,
# on a model whose decode the GPU bounds; benchmarks/results/h200-2026-12-02-c says why):
#   models       the builtin models converted from GGUF (run.sh models) and the 7B-shape random Llama
#                (make_llama7b.py) beside them, outside any cell's clock
#   compare-7b   served_compare.py on the 7B-shape random Llama at c=1, vLLM's bench defaults (1024 in,
#                128 out), no throughput part; its GPU-bound TPOT is the clients' common ground. Defaults:
#                COMPARE_7B_REQUESTS=30 a run, COMPARE_7B_ROUNDS=4, COMPARE_7B_CLIENTS="bench bench-text qmx
#                qmx-text" (rotated per round: each client holds each position once only with as many
#                rounds as clients). ~700 s: a cold 7B start, then 4 rounds of ~120 s.
#                2026-12-02 (-e, 20 requests, with qmx-idle): TPOT +0.2 %; TTFT -13.9 % as qmx (token ids
#                skip the server's 2.6 ms of tokenizing; sweeps now send text) and -5.6 % as qmx-text, the
#                rest attributed to vLLM's client (+1.0 ms) and its random-token text (+0.9 ms); no idle effect.
#                bench-text sends qmx-text's kind of prompts through vLLM's client: the clients alone.
#                2026-12-02 (-f, one 20-request round; two machines were lost): qmx-text against bench-text
#                TTFT p50 +1.4 %, TPOT p50 +0.2 %, after the load generator stopped re-tokenizing between a
#                closed loop's requests (+5.6/+14.6 % before); that server moved up to 11 % between runs, so
#                the TTFT pair needs rounds on a steadier machine
# and the steps of earlier runs:
#   compare-c1   served_compare.py at concurrency 1 only, 5 rounds of `vllm bench serve`, quantmatrix's
#                client and quantmatrix's client with vLLM's payload (text prompts, final usage), no
#                throughput part; its server is the machine's first vLLM start, so it pays the cold caches
#   same-spec    h200-served-same-spec.yaml: issue 18's served SmolLM2 cell, with warm caches
#                (compare-c1 started the same server before), against the 388 s it took with two starts
#   llama7b-bf16 h200-llama7b-bf16.yaml: the 7B bf16 cell on vLLM (throughput, batch-1, serving c=1..128)
#   bench7b      `vllm bench throughput` on that 7B model, right after, in the cell's config
#   gemma-kv     h200-gemma3-kv.yaml: Gemma-3-270m bf16 with the auto and the fp8 KV cache on vLLM
#                (compare-c1 to gemma-kv: the fourth session, 2026-12-02, benchmarks/results/h200-2026-12-02-c)
#   gemma-vllm   h200-gemma3-vllm.yaml (bf16, FP8, GPTQ g128, fp8 KV; GSM8K, JSON, long context, serving;
#                2026-12-02, third: its fp8 KV cell was cut by the step's cap)
#   llama7b-hf   h200-llama7b-hf.yaml: the 7B in bf16, NF4 and LLM.int8 on transformers (2026-12-02, third)
#   compare (rounds at c=1 and 32, throughput variants, then `vllm bench throughput`); gemma-hf
#                (h200-gemma3-hf.yaml: KL, lm-eval, NF4, int8); same-spec first in the order: the cold case
#   smollm2 hf llama7b-model llama7b   the 2026-12-01 run (benchmarks/results/h200-2026-12-01)
set -u
mkdir -p /tmp/pipe
rm -f /tmp/pipe/all.done     # a rerun's polls wait for this run, not an earlier one's end
step() {
  local name=$1; shift
  [ -f "/tmp/pipe/$name.done" ] && return 0
  local t0=$SECONDS
  mkdir -p "/tmp/pipe/$name"
  # GPU memory already in use when a step starts: a process left by an earlier step shows here
  echo "== $name $(date -u +%T), GPU memory in use: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null)"
  OUT=/tmp/pipe/$name "$@" > "/tmp/pipe/$name/stdout.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s $(date -u +%T)" | tee -a /tmp/pipe/steps
  touch "/tmp/pipe/$name.ended"
  [ "$rc" -eq 0 ] && touch "/tmp/pipe/$name.done"
  return 0
}
run_step() {
  case $1 in
    models)     step models env LLAMA7B=/tmp/models/llama7b bash cluster/gpu/run.sh models ;;
    compare-c1) step compare-c1 env COMPARE_ONLY=1 COMPARE_TIMEOUT="${COMPARE_S:-600}" \
                  COMPARE_ARGS="--concurrency 1 --requests 50 --rounds 5 --throughput-rounds 0" \
                  bash cluster/gpu/run.sh compare ;;
    compare-7b) step compare-7b env COMPARE_ONLY=1 COMPARE_TIMEOUT="${COMPARE_7B_S:-900}" COMPARE_MODEL=/tmp/models/llama7b \
                  COMPARE_ARGS="--concurrency 1 --requests ${COMPARE_7B_REQUESTS:-30} --rounds ${COMPARE_7B_ROUNDS:-4} --throughput-rounds 0 --input-len 1024 --output-len 128 --clients ${COMPARE_7B_CLIENTS:-bench bench-text qmx qmx-text}" \
                  bash cluster/gpu/run.sh compare ;;
    llama7b-bf16) step llama7b-bf16 env SPEC=cluster/gpu/h200-llama7b-bf16.yaml bash cluster/gpu/run.sh "${L7B_S:-300}" ;;
    bench7b)    step bench7b env BENCH_MODEL=/tmp/models/llama7b BENCH_TIMEOUT=300 bash cluster/gpu/run.sh bench ;;
    llama7b-hf) step llama7b-hf env SPEC=cluster/gpu/h200-llama7b-hf.yaml bash cluster/gpu/run.sh "${L7B_HF_S:-420}" ;;
    same-spec)  step same-spec env SPEC=cluster/gpu/h200-served-same-spec.yaml bash cluster/gpu/run.sh "${SAME_S:-420}" ;;
    compare)    step compare bash cluster/gpu/run.sh compare ;;
    gemma-vllm) step gemma-vllm env SPEC=cluster/gpu/h200-gemma3-vllm.yaml bash cluster/gpu/run.sh "${GEMMA_V_S:-720}" ;;
    gemma-kv)   step gemma-kv env SPEC=cluster/gpu/h200-gemma3-kv.yaml bash cluster/gpu/run.sh "${GEMMA_KV_S:-420}" ;;
    gemma-hf)   step gemma-hf env SPEC=cluster/gpu/h200-gemma3-hf.yaml bash cluster/gpu/run.sh "${GEMMA_H_S:-300}" ;;
    smollm2)    step smollm2 env SPEC=cluster/gpu/h200-smollm2.yaml bash cluster/gpu/run.sh "${SMOLLM2_S:-720}" ;;
    hf)         step hf env SPEC=cluster/gpu/h200-smollm2-hf.yaml bash cluster/gpu/run.sh "${HF_S:-300}" ;;
    llama7b-model) step llama7b-model bash cluster/gpu/run.sh llama7b ;;
    llama7b)    step llama7b env SPEC=cluster/gpu/h200-llama7b.yaml bash cluster/gpu/run.sh "${LLAMA7B_S:-600}" ;;
    *) echo "unknown step $1"; return 1 ;;
  esac
}
for name in ${STEPS:-models compare-7b}; do run_step "$name"; done
touch /tmp/pipe/all.done
