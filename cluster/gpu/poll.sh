#!/usr/bin/env bash
# GPU machine: one poll call of a detached h200-pipeline.sh. Waits up to MAX_S seconds (default 540)
# or until the pipeline's all.done, and every 60 s (and at the end) snapshots the pipeline's logs, the
# store and the build log into $OUT/snap.tar.gz, so a call cut by the budget still brings the latest
# back. Send the next poll right after this one returns: the machine is given back ~30 s after the
# last call ends, and the detached work dies with it.
#   bash cluster/gpu/poll.sh [MAX_S]
set -u
max=${1:-540}
OUT=${OUT:-/tmp/out}
snap() {
  tar czf "$OUT/snap.tmp.tar.gz" --exclude='*.safetensors' -C / tmp/pipe tmp/pipe.log tmp/results \
    tmp/qmx-cache/artifacts/builds.jsonl 2>/dev/null
  mv -f "$OUT/snap.tmp.tar.gz" "$OUT/snap.tar.gz"
}
t0=$SECONDS
last=$SECONDS
while [ $((SECONDS - t0)) -lt "$max" ] && [ ! -f /tmp/pipe/all.done ]; do
  sleep 10
  if [ $((SECONDS - last)) -ge 60 ]; then snap; last=$SECONDS; fi
done
snap
echo "-- steps after $((SECONDS - t0)) s of polling:"; cat /tmp/pipe/steps 2>/dev/null
echo "-- pipeline:"; tail -4 /tmp/pipe.log
cur=$(ls -t /tmp/pipe/*/stdout.log 2>/dev/null | head -1)
echo "-- $cur:"; [ -n "$cur" ] && grep -v "━" "$cur" | tail -12 | cut -c1-300
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
if [ -f /tmp/pipe/all.done ]; then echo ALL-DONE; fi
