#!/usr/bin/env bash
# The H200 session's whole run, detached from the 10-minute call limit (GPU machine, repository root,
# after the stage folders were collected):
#   setsid nohup bash cluster/gpu/h200-pipeline.sh > /tmp/pipe.log 2>&1 < /dev/null &
# Each step writes its outputs to /tmp/pipe/<step>/ and, when it ends, a line to /tmp/pipe/steps
# (name, exit status, seconds), the flag /tmp/pipe/<step>.ended, and /tmp/pipe/<step>.done only if it
# succeeded (a rerun skips done steps, so a failed or time-capped one runs again); a later call polls
# for the flags and copies /tmp/pipe/ back. Order: the SmolLM2 vLLM sweep, then vLLM's own benchmarks straight
# after it (same machine, back to back), then the hf sweep (KL), then the 7B-shape sweep. Each sweep has
# a time cap (SIGINT: finished cells are kept, a rerun of this script resumes them).
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
step smollm2 env SPEC=cluster/gpu/h200-smollm2.yaml bash cluster/gpu/run.sh "${SMOLLM2_S:-720}"
step compare bash cluster/gpu/run.sh compare
step hf env SPEC=cluster/gpu/h200-smollm2-hf.yaml bash cluster/gpu/run.sh "${HF_S:-300}"
step llama7b-model bash cluster/gpu/run.sh llama7b
step llama7b env SPEC=cluster/gpu/h200-llama7b.yaml bash cluster/gpu/run.sh "${LLAMA7B_S:-600}"
touch /tmp/pipe/all.done
