"""vLLM's own OpenAI-compatible server (`vllm serve`) for a vLLM cell's served-latency run.

The offline engine is stopped first (its GPU memory is needed), then `vllm serve` starts as a
child process with the same engine arguments, on 127.0.0.1 and a free port; the context
manager yields its base URL once `/health` answers, and stops it afterwards.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Iterator

BATCHING = "continuous"     # vLLM's own scheduler
START_TIMEOUT_S = 900      # a first start on a fresh machine compiles kernels for minutes

# LLM(...) keyword -> `vllm serve` flag; booleans become bare flags
_FLAGS = {"tokenizer": "--tokenizer", "dtype": "--dtype", "kv_cache_dtype": "--kv-cache-dtype",
          "tensor_parallel_size": "--tensor-parallel-size", "trust_remote_code": "--trust-remote-code",
          "gpu_memory_utilization": "--gpu-memory-utilization", "max_model_len": "--max-model-len",
          "seed": "--seed", "max_logprobs": "--max-logprobs",
          "distributed_executor_backend": "--distributed-executor-backend"}


def serve_command(args: dict[str, Any], port: int) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", args["model"],
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "cell"]
    for key, flag in _FLAGS.items():
        value = args.get(key)
        if value is None or value is False:
            continue
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd


def _die_with_parent() -> None:
    """In the server's process: get SIGTERM when the worker that started it dies (a killed Ray
    actor runs no cleanup, and an orphaned server would keep most of the GPU's memory)."""
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


@contextlib.contextmanager
def serve(engine, settings: dict[str, Any]) -> Iterator[str]:
    from jobs.engines.vllm import shutdown

    args = engine.info["engine_args"]
    shutdown(engine)        # the server needs the GPU memory the offline engine holds
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="vllm-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(serve_command(args, port), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "VLLM_NO_USAGE_STATS": "1"}, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = open(log.name, errors="replace").read()[-3000:]
                raise RuntimeError(f"vllm serve did not start (exit {proc.poll()}); log tail:\n{tail}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
