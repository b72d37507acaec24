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
# STEPS picks the steps (default: this kit's run of 2026-12-02, in this order):
#   models       the builtin models converted from GGUF (run.sh models), outside any cell's clock
#   same-spec    h200-served-same-spec.yaml: issue 18's served SmolLM2 cell as the machine's first vLLM
#                start (cold caches), against the 388 s it took with two engine starts
#   compare      served_compare.py (quantmatrix's clients beside `vllm bench serve` on one `vllm serve`,
#                in rounds; throughput variants), then `vllm bench throughput`
#   gemma-vllm   h200-gemma3-vllm.yaml (bf16, FP8, GPTQ g128, fp8 KV; GSM8K, JSON, long context, serving)
#   gemma-hf     h200-gemma3-hf.yaml (KL, lm-eval evals-mmlu, NF4, LLM.int8)
#   smollm2 hf llama7b-model llama7b   the 2026-12-01 run (benchmarks/results/h200-2026-12-01)
set -u
mkdir -p /tmp/pipe
step() {
  local name=$1; shift
  [ -f "/tmp/pipe/$name.done" ] && return 0
  local t0=$SECONDS
  mkdir -p "/tmp/pipe/$name"
  echo "== $name $(date -u +%T)"
  OUT=/tmp/pipe/$name "$@" > "/tmp/pipe/$name/stdout.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s $(date -u +%T)" | tee -a /tmp/pipe/steps
  touch "/tmp/pipe/$name.ended"
  [ "$rc" -eq 0 ] && touch "/tmp/pipe/$name.done"
  return 0
}
run_step() {
  case $1 in
    models)     step models bash cluster/gpu/run.sh models ;;
    same-spec)  step same-spec env SPEC=cluster/gpu/h200-served-same-spec.yaml bash cluster/gpu/run.sh "${SAME_S:-420}" ;;
    compare)    step compare bash cluster/gpu/run.sh compare ;;
    gemma-vllm) step gemma-vllm env SPEC=cluster/gpu/h200-gemma3-vllm.yaml bash cluster/gpu/run.sh "${GEMMA_V_S:-540}" ;;
    gemma-hf)   step gemma-hf env SPEC=cluster/gpu/h200-gemma3-hf.yaml bash cluster/gpu/run.sh "${GEMMA_H_S:-300}" ;;
    smollm2)    step smollm2 env SPEC=cluster/gpu/h200-smollm2.yaml bash cluster/gpu/run.sh "${SMOLLM2_S:-720}" ;;
    hf)         step hf env SPEC=cluster/gpu/h200-smollm2-hf.yaml bash cluster/gpu/run.sh "${HF_S:-300}" ;;
    llama7b-model) step llama7b-model bash cluster/gpu/run.sh llama7b ;;
    llama7b)    step llama7b env SPEC=cluster/gpu/h200-llama7b.yaml bash cluster/gpu/run.sh "${LLAMA7B_S:-600}" ;;
    *) echo "unknown step $1"; return 1 ;;
  esac
}
for name in ${STEPS:-models same-spec compare gemma-vllm gemma-hf}; do run_step "$name"; done
tar czf /tmp/pipe/results.tar.gz -C /tmp results 2>/dev/null
touch /tmp/pipe/all.done
