"""lm-evaluation-harness tasks on the loaded model: built-in offline ones, lm-eval's own, local YAML.

A name in `tasks` is one of:
  - a built-in task below (data shipped in packages, fully offline);
  - a path to a local lm-eval task YAML file (.yaml/.yml; its folder is indexed, so its
    `include:`s resolve);
  - any task or group name lm-eval itself ships (gsm8k, mmlu, arc_challenge, hellaswag, ifeval,
    wikitext, ...), loaded through lm-eval's own TaskManager; their data comes from the hub, so
    offline such a task is skipped with a one-line note naming the error.
Multiple-choice `acc` is recorded as `accuracy` (the catalog's recovery-% view reads it, with
`task` in its settings); every other lm-eval metric as `lm_eval_<metric>`, with lm-eval's own
higher_is_better, and the filter (e.g. gsm8k's strict-match / flexible-extract) in its settings;
lm-eval's standard error, where it gives one, as `<name>_stderr`.

Built-in tasks are built at run time from package-shipped data, so no hub download is needed:

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


_YAML_SUFFIXES = (".yaml", ".yml")


def _lm_eval_task(task: str, folder: Path, builtin: dict[str, str]):
    """(what simple_evaluate is given, the results key, source, TaskManager) for one spec name."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    if task in builtin:
        return builtin[task], builtin[task], "builtin", TaskManager(include_path=str(folder), include_defaults=False)
    if task.endswith(_YAML_SUFFIXES):
        path = Path(task).expanduser().resolve()
        entry = TaskIndex.entry_from_path(path)
        if entry is None:
            raise ValueError(f"lm_eval: {task} names no task or group (no `task:` or `group:` key)")
        return str(path), entry.name, "yaml", TaskManager(include_path=str(path.parent), include_defaults=False)
    return task, task, "lm-eval", _default_task_manager()


_DEFAULTS: list = []      # lm-eval's own task index, built once per process (it walks thousands of YAMLs)


def _default_task_manager():
    from lm_eval.tasks import TaskManager
    if not _DEFAULTS:
        _DEFAULTS.append(TaskManager())
    return _DEFAULTS[0]


def _metrics(result: dict[str, Any], key: str, **settings: Any) -> list[Metric]:
    """lm-eval's "<metric>,<filter>" scores of `key` as metrics, each with its stderr where given."""
    scores, better = result["results"][key], result.get("higher_is_better", {}).get(key, {})
    n = result["n-samples"]
    items = n[key]["effective"] if key in n else sum(v["effective"] for v in n.values())   # a group: its subtasks
    out = []
    for name, value in scores.items():
        metric, _, filt = name.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        ours = "accuracy" if metric == "acc" else f"lm_eval_{metric}"
        direction = {True: "higher", False: "lower"}.get(better.get(metric), "none")
        common = dict(settings, items=items, filter=filt)
        out.append(Metric.of(ours, value, "fraction" if metric.startswith(("acc", "exact_match")) else "value",
                             direction, **common))
        stderr = scores.get(f"{metric}_stderr,{filt}")
        if isinstance(stderr, (int, float)):
            out.append(Metric.of(f"{ours}_stderr", stderr, out[-1].unit, "none", **common))
    return out


def evaluate(engine, settings: dict[str, Any]) -> list[Metric] | Evaluation:
    if not engine.full_distribution:
        # lm-eval's vllm backend builds its own LLM: a second copy beside this cell's engine
        return Evaluation([], notes=(f"lm_eval not run on the {engine.name} engine here: use the hf engine",))
    from lm_eval import simple_evaluate

    folder = task_dir()
    builtin = json.loads((folder / "done").read_text())
    limit, fewshot = settings["limit"], settings["num_fewshot"]
    lm = engine.lm_eval_model(batch_size=8)
    metrics, notes = [], []
    for task in settings["tasks"]:
        spec, key, source, manager = _lm_eval_task(task, folder, builtin)
        try:
            result = simple_evaluate(model=lm, tasks=[spec], num_fewshot=fewshot, limit=limit, task_manager=manager,
                                     log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                     fewshot_random_seed=0)
        except Exception as err:     # noqa: BLE001  a hub task offline, a broken YAML: that task only
            if source == "builtin":
                raise
            first = (str(err).strip().splitlines() or [""])[0][:200]
            notes.append(f"lm_eval task {task} not run ({source}): {type(err).__name__}: {first}")
            continue
        metrics += _metrics(result, key, task=task, source=source,
                            num_fewshot="task default" if fewshot is None else fewshot)
    return Evaluation(metrics, notes=tuple(notes))
