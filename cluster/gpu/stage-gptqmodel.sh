#!/usr/bin/env bash
# CPU machine, from the repository root: pack the GPTQModel set (cluster/gpu/gptqmodel-gpu.txt)
# into one stage folder (default .stage7/, ignored by git) for the lent GPU machine, which has no
# network. Wheels are downloaded for Python 3.12 x86_64; the pure-Python sdists are built into
# wheels here; pypcre (a C extension) stays an sdist and is built there by cluster/gpu/run.sh.
# Carry the folder in one call, with `bash .stage7/install.sh collect .stage7` as the others.
set -euo pipefail
out=${1:-.stage7}
req=cluster/gpu/gptqmodel-gpu.txt
pip=(python3 -m pip)
[ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
names() { sed 's/#.*//; /^\s*$/d' "$req"; }
wheels=() sdists=()
while read -r spec; do
  case ${spec%%==*} in
    gptqmodel|defuser|device-smi|logbar|tokenicer) sdists+=("$spec") ;;
    pypcre) "${pip[@]}" download -q --no-deps --no-build-isolation --no-binary=:all: -d "$out" "$spec" ;;
    *) wheels+=("$spec") ;;
  esac
done < <(names)
"${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out" "${wheels[@]}"
"${pip[@]}" download -q --no-deps --no-build-isolation --no-binary=:all: -d "$tmp" "${sdists[@]}"
"${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$out" "$tmp"/*.tar.gz
# the build tools go to their own folder on the GPU machine, not into the quantize stage
(cd "$out" && ls *.whl | grep -v -E "^(setuptools|wheel)-" > gptqmodel-gpu.files)
cp ../shared/gpu/install.sh "$out"/ 2>/dev/null || cp .stage1/install.sh "$out"/
echo "$out: $(wc -l < "$out/gptqmodel-gpu.files") wheels + $(ls "$out"/*.tar.gz | wc -l) sdist, $(du -sh "$out" | cut -f1)"
