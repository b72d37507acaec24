"""Multiple-choice accuracy through lm-evaluation-harness, fully offline, on the loaded model.

Tasks are built at run time from package-shipped data, so no hub download is ever needed:

  evals-mmlu: 1000 MMLU questions shipped in the `evals` package
      (registry/data/sandbagging/samples-all-large.jsonl; each prompt already lists A-D and ends
      in "Answer:"). Scored MMLU-style: the log-likelihood of " A" .. " D" after the prompt, the
      highest wins (lm-eval's `acc`). The first `limit` items in file order are used, so every
      cell of a sweep answers the same questions.

The task YAML and its JSONL live in <cache>/lm-eval-tasks/, written atomically once per task.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from jobs.assets import package_file
from jobs.filelock import file_lock
from jobs.evaluate import Evaluation, Metric
from jobs.models import cache_root

_TASK_PREFIX = "qmx_"   # lm-eval task names must not clash with its builtin ones


def _evals_mmlu(out: Path) -> dict[str, Any]:
    src = package_file("evals", "evals/registry/data/sandbagging/samples-all-large.jsonl")
    rows = []
    with src.open() as f:
        for row in map(json.loads, f):
            rows.append({"question": row["question"], "label": "ABCD".index(row["answer"])})
    data = out / "evals-mmlu.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "task": _TASK_PREFIX + "evals_mmlu",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


TASKS: dict[str, Callable[[Path], dict[str, Any]]] = {"evals-mmlu": _evals_mmlu}


def task_dir() -> Path:
    """A folder of lm-eval task YAMLs for every task in TASKS, built once."""
    import yaml
    out = cache_root() / "lm-eval-tasks"
    if (out / "done").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.with_suffix(".lock")):
        if not (out / "done").is_file():
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".lm-eval-tasks-"))
            final_paths = {}
            for name, build in TASKS.items():
                config = build(tmp)
                # data file paths must point at the final folder, not the temporary one
                files = config["dataset_kwargs"]["data_files"]
                config["dataset_kwargs"]["data_files"] = {k: str(out / Path(v).name) for k, v in files.items()}
                (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
                final_paths[name] = config["task"]
            (tmp / "done").write_text(json.dumps(final_paths))
            if out.exists():       # a half-built folder from a crashed worker (no `done`)
                import shutil
                shutil.rmtree(out)
            os.replace(tmp, out)
    return out


def evaluate(engine, settings: dict[str, Any]) -> list[Metric] | Evaluation:
    if engine.model is None:
        # lm-eval's vllm backend builds its own LLM: a second copy beside this cell's engine
        return Evaluation([], notes=(f"lm_eval not run on the {engine.name} engine here: use the hf engine",))
    # offline: the tasks read local JSONL; nothing may reach the hub
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = task_dir()
    names = json.loads((folder / "done").read_text())
    limit, fewshot = settings.get("limit", 100), settings.get("num_fewshot", 0)
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=8)
    metrics = []
    for task in settings.get("tasks", ["evals-mmlu"]):
        result = simple_evaluate(model=lm, tasks=[names[task]], num_fewshot=fewshot, limit=limit,
                                 task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                                 log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                 fewshot_random_seed=0)
        scores = result["results"][names[task]]
        n = result["n-samples"][names[task]]["effective"]
        metrics.append(Metric.of("accuracy", scores["acc,none"], "fraction", "higher", task=task, items=n,
                                 num_fewshot=fewshot))
    return metrics
