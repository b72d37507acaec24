#!/usr/bin/env bash
# CPU machine, from the repository root: pack the offline assets the specs' corpora and tasks read
# (the `evals` package: jobs/corpora.py, jobs/evaluate/lm_eval_tasks.py) into one small stage folder
# (default .stage-assets/, ignored by git) for the lent GPU machine, which has no network.
# The 44 MiB evals wheel is rewritten to its dist-info plus exactly the data files that the code
# under jobs/ names (found by grep, so a new corpus file is staged without editing this script):
# jobs.assets.package_file finds them there without importing the package.
# Carry the folder in one call (with another stage folder if both fit in 64 MiB) and run
# `bash .stage-assets/install.sh collect .stage-assets`; cluster/gpu/run.sh installs the set.
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
(cd "$out" && ls *.whl > assets-gpu.files)
cp ../shared/gpu/install.sh "$out"/ 2>/dev/null || cp .stage1/install.sh "$out"/
echo "$out: $(du -sh "$out" | cut -f1)"
