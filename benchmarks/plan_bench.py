"""`qmx plan` benchmark: the issue's acceptance spec (3 models x 6 methods x 3 bits x 3 group sizes x 3 KV
dtypes, two engines) planned end to end, as a user runs it.

The three models are local folders holding only a config.json (Llama-2-7B, Llama-3-8B and
Qwen2.5-7B shapes), so the plan reads configs exactly as it would from the hub, without the network.
Prints the wall time of `qmx plan SPEC` as a fresh process (interpreter start, imports, config reads,
expansion, estimates, the rich tables), median and min of RUNS, with the process's CPU time (user + sys:
what the wall time is on an idle core; on a shared machine the wall time also holds the wait for one)
and the load average, and the in-process time of expand + estimate.

    .venv/bin/python benchmarks/plan_bench.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

CONFIGS = {
    "llama-2-7b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                   "tie_word_embeddings": False},
    "llama-3-8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                   "tie_word_embeddings": False},
    "qwen2.5-7b": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                   "tie_word_embeddings": False},
}
QUANT = {"bits": [3, 4, 8], "group_size": [32, 64, 128]}


def write_spec(folder: Path) -> Path:
    models = []
    for name, config in CONFIGS.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
        models.append({"id": str(folder / name)})
    spec = {
        "name": "plan-bench", "models": models,
        "methods": [{"method": "none"}] + [{"method": m, **QUANT} for m in ("gptq", "awq", "nf4", "int8", "fp8")],
        "kv_cache_dtype": ["auto", "fp8_e4m3", "fp8_e5m2"], "engine": ["vllm", "hf"],
        "exclude": [{"engine": "hf", "kv_cache_dtype": ["fp8_e4m3", "fp8_e5m2"]}],   # dropped, not skipped
        "evaluation": {"serving": {"concurrency": [1, 16], "prompt_tokens": 512, "output_tokens": 256}},
        "resources": {"accelerator_type": "L4"},
    }
    path = folder / "plan-bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from matrix import expand_matrix, load_spec
    from matrix.plan import build_plan

    with tempfile.TemporaryDirectory(prefix="qmx-plan-bench-") as tmp:
        spec_path = write_spec(Path(tmp))
        spec = load_spec(spec_path)
        configs = {m.id: json.loads((Path(m.id) / "config.json").read_text()) for m in spec.models}
        t = time.perf_counter()
        expansion = expand_matrix(spec, configs)
        plan = build_plan(spec, expansion, configs)
        in_process = time.perf_counter() - t

        env = {**os.environ, "COLUMNS": "200"}
        walls, cpus, out = [], [], ""
        load = os.getloadavg()[0]
        for _ in range(args.runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            proc = subprocess.run([str(ROOT / ".venv/bin/qmx"), "plan", str(spec_path)], capture_output=True,
                                  text=True, env=env, cwd=ROOT, check=True)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            out = proc.stdout
        summary = [line for line in out.splitlines() if line and line[0].isdigit()]

    # per model, KV dtype and engine: none 1 + gptq 3x3 + awq 3x3 + nf4 3 + int8 3 + fp8 3 (bits; no group size)
    product = len(CONFIGS) * (1 + 2 * 9 + 3 * 3) * 3 * 2
    print(f"spec: {len(CONFIGS)} models x 6 methods (none + gptq, awq, nf4, int8, fp8) x bits 3/4/8 x groups "
          f"32/64/128 (gptq, awq) x 3 KV dtypes x 2 engines, target L4; exclude fp8 KV on hf")
    print(f"expansion: product {product} = {len(expansion.cells)} cells + {len(expansion.skipped)} skipped + "
          f"{expansion.excluded} excluded; {plan.quantization_jobs} quantization jobs; {plan.fitting} cells fit")
    print(f"in-process expand + estimate: {in_process * 1000:.1f} ms")
    print(f"`qmx plan` as a fresh process, {args.runs} runs: wall median {statistics.median(walls):.2f} s, "
          f"min {min(walls):.2f} s, max {max(walls):.2f} s; CPU (user+sys) median {statistics.median(cpus):.2f} s "
          f"(acceptance: under 2 s)")
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load:.1f} at the start")
    print("qmx plan summary lines:")
    for line in summary:
        print(f"  {line}")


if __name__ == "__main__":
    main()
