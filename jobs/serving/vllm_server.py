"""vLLM's own OpenAI-compatible server (`vllm serve`): the one engine of a vLLM cell.

`start(args)` launches `vllm serve` with the cell's engine arguments, on 127.0.0.1 and a free port,
under `group_guard.py` (which ends the server's whole process group when the worker dies), and
returns once `/health` answers. Every evaluator of the cell then
talks to that one server: perplexity through `prompt_logprobs`, offline-style speed through plain
completions requests (`jobs.serving.openai_batch`), served latency through streamed ones
(`serve`). So a vLLM cell costs one engine start, and its served figures are the server users deploy.

Compile and kernel caches go to one folder per node (`cache_env`), shared by every cell's
server there: vLLM's torch.compile artifacts, Inductor's and Triton's kernels, FlashInfer's
JIT-built kernels and the driver's PTX cache. What a later start reads from it is in its log
(`startup_facts`).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from jobs.serving import ServerHandle
from jobs.serving.group_guard import group_members

BATCHING = "continuous"     # vLLM's own scheduler
START_TIMEOUT_S = 900      # a first start on a fresh machine compiles kernels for minutes
SERVED_MODEL_NAME = "cell"
GUARD = Path(__file__).with_name("group_guard.py")
GUARD_GRACE_S = 30          # the server's own shutdown, before the guard kills what is left

# LLM(...) keyword -> `vllm serve` flag; booleans become bare flags
_FLAGS = {"tokenizer": "--tokenizer", "dtype": "--dtype", "kv_cache_dtype": "--kv-cache-dtype",
          "tensor_parallel_size": "--tensor-parallel-size", "trust_remote_code": "--trust-remote-code",
          "gpu_memory_utilization": "--gpu-memory-utilization", "max_model_len": "--max-model-len",
          "seed": "--seed", "max_logprobs": "--max-logprobs",
          "distributed_executor_backend": "--distributed-executor-backend"}

# cache variable -> folder under the node's engine cache (a user's own setting wins)
_CACHE_VARS = {"VLLM_CACHE_ROOT": "vllm", "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton",
               "FLASHINFER_WORKSPACE_BASE": "flashinfer", "CUDA_CACHE_PATH": "cuda"}

# what the server's log says about its start: name -> (pattern, converter)
_LOG_FACTS = {
    "kv_cache_tokens": (r"GPU KV cache size: ([\d,]+) tokens", lambda s: int(s.replace(",", ""))),
    "weights_gib": (r"Model loading took ([\d.]+) GiB", float),
    "compile_seconds": (r"torch\.compile took ([\d.]+) s in total", float),
    "compile_cache_load_seconds": (r"Directly load the compiled graph\(s\).* took ([\d.]+) s", float),
    "init_engine_seconds": (r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)", float),
}


def serve_command(args: dict[str, Any], port: int) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", args["model"],
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_MODEL_NAME]
    for key, flag in _FLAGS.items():
        value = args.get(key)
        if value is None or value is False:
            continue
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd


def cache_env(root: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Cache variables pointing into `root` (one folder per node), except those already set."""
    environ = os.environ if environ is None else environ
    return {var: str(root / sub) for var, sub in _CACHE_VARS.items() if not environ.get(var)}


def node_cache_env() -> dict[str, str]:
    """`cache_env` under the node's quantmatrix cache (QMX_CACHE): what every server here shares."""
    from jobs.models import cache_root
    return cache_env(cache_root() / "engine-cache")


def startup_facts(log: str) -> dict[str, float | int]:
    """The figures a server's start logged (absent ones left out); the last match wins."""
    facts: dict[str, float | int] = {}
    for name, (pattern, convert) in _LOG_FACTS.items():
        hits = re.findall(pattern, log)
        if hits:
            facts[name] = convert(hits[-1])
    return facts


def _die_with_parent() -> None:
    """In the server's guard: get SIGTERM when the worker that started it dies (a killed Ray actor runs
    no cleanup, and an orphaned server would keep most of the GPU's memory); the guard then ends the
    whole group (group_guard.py)."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. On Linux zombies do not count: they hold no memory, and
    under a PID 1 that never reaps (a container's) an orphaned engine core's zombie would stay forever."""
    if sys.platform == "linux":
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)               # signal 0: is anyone of the group still there?
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait for every process of the group to exit; SIGKILL what is left at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class VllmServer:
    """A running `vllm serve`: its base URL, process and log."""
    url: str
    proc: subprocess.Popen
    log_path: str
    start_seconds: float

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def close(self) -> None:
        """Stop the server's whole process group (its engine-core children hold the GPU even when the API
        process has already exited) and wait until the server is gone: the next cell needs the GPU."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=GUARD_GRACE_S + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _wait_group_gone(self.proc.pid, timeout_s=30.0)


def start(args: dict[str, Any]) -> VllmServer:
    """Start `vllm serve` with the engine arguments `args`; return once it answers /health."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="vllm-serve-", suffix=".log", delete=False)
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", **node_cache_env()}
    began = time.perf_counter()
    cmd = serve_command(args, port)
    if sys.platform == "linux":     # the guard takes the engine core down with the server (group_guard.py)
        cmd = [sys.executable, str(GUARD), str(GUARD_GRACE_S), str(os.getpid()), *cmd]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = VllmServer(url, proc, log.name, 0.0)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = server.log()[-3000:]
                raise RuntimeError(f"vllm serve did not start (exit {proc.poll()}); log tail:\n{tail}")
            time.sleep(0.5)
    except BaseException:       # a failed start, Ctrl-C or a cancelled task: nothing is left running
        server.close()
        raise
    server.start_seconds = time.perf_counter() - began
    return server


@contextlib.contextmanager
def serve(server: VllmServer, settings: dict[str, Any]) -> Iterator[ServerHandle]:
    """The cell's running server (its engine, `VllmEngine.serve`): nothing is started or stopped here."""
    yield ServerHandle(server.url, BATCHING)
