"""The vLLM server engine's CPU-checkable parts: the `vllm serve` command line, the per-node cache
folders, the facts read from its start-up log, the parsing of its `prompt_logprobs`, and a server
that dies at start. The server itself runs on the GPU (tests/test_gpu_engines.py)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from jobs.engines import EngineInfo
from jobs.engines.vllm import VllmEngine
from jobs.serving.openai_batch import check_token_counts, own_token_logprobs
from jobs.serving.vllm_server import cache_env, serve_command, start, startup_facts


def test_serve_command_passes_engine_args_as_flags():
    args = {"model": "/m", "tokenizer": "/m", "dtype": "bfloat16", "kv_cache_dtype": "fp8_e4m3",
            "tensor_parallel_size": 1, "trust_remote_code": False, "gpu_memory_utilization": 0.85,
            "max_model_len": 4096, "seed": 0, "max_logprobs": 64}
    cmd = serve_command(args, 8123)
    assert cmd[cmd.index("serve") + 1] == "/m" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--kv-cache-dtype") + 1] == "fp8_e4m3"
    assert cmd[cmd.index("--max-logprobs") + 1] == "64"
    assert "--trust-remote-code" not in cmd and "--distributed-executor-backend" not in cmd
    assert "--trust-remote-code" in serve_command({**args, "trust_remote_code": True}, 8123)


def test_cache_env_shares_one_node_folder_and_keeps_user_settings(tmp_path):
    env = cache_env(tmp_path, {"TRITON_CACHE_DIR": "/mine"})
    assert "TRITON_CACHE_DIR" not in env
    assert {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE"} <= set(env)
    assert all(Path(v).parent == tmp_path for v in env.values())
    assert len(set(env.values())) == len(env)       # one sub-folder per cache


def test_startup_facts_read_from_vllm_log_lines():
    # the lines as vLLM 0.26 formats them (gpu_model_runner, kv_cache_utils, compilation, core)
    log = ("(EngineCore pid=1) INFO 12-01 10:00:00 [gpu_model_runner.py:5348] Model loading took 0.2518 GiB "
           "memory and 1.234 seconds\n"
           "(EngineCore pid=1) INFO [backends.py:292] Directly load the compiled graph(s) for compile range "
           "(1, 16384) from the cache, took 2.714 s\n"
           "(EngineCore pid=1) INFO [monitor.py:53] torch.compile took 4.01 s in total\n"
           "(EngineCore pid=1) INFO [kv_cache_utils.py:2177] GPU KV cache size: 3,101,392 tokens\n"
           "(EngineCore pid=1) INFO [core.py:348] init engine (profile, create kv cache, warmup model) took 21.50 s\n")
    facts = startup_facts(log)
    assert facts == {"kv_cache_tokens": 3101392, "weights_gib": 0.2518, "compile_seconds": 4.01,
                     "compile_cache_load_seconds": 2.714, "init_engine_seconds": 21.5}
    assert startup_facts("nothing logged") == {}


def test_own_token_logprobs_reads_each_prompt_tokens_entry():
    # vLLM's JSON: token ids as string keys; the top-1 rides along where it is not the prompt token
    choices = [{"index": 0, "prompt_logprobs": [None, {"7": {"logprob": -1.5, "rank": 2, "decoded_token": "a"},
                                                       "9": {"logprob": -0.5, "rank": 1, "decoded_token": "b"}},
                                                {"3": {"logprob": -0.25, "rank": 1, "decoded_token": "c"}}]},
               {"index": 1, "prompt_logprobs": [None, {"4": {"logprob": -2.0, "rank": 5, "decoded_token": "d"}}]}]
    assert own_token_logprobs([[1, 7, 3], [2, 4]], choices) == [[None, -1.5, -0.25], [None, -2.0]]
    with pytest.raises(RuntimeError, match="2 prompt log-probs for a 3-token prompt"):
        own_token_logprobs([[1, 7, 3], [2, 4, 5]], [choices[0], choices[1]][::-1])
    with pytest.raises(RuntimeError, match="1 choices for 2 prompts"):
        own_token_logprobs([[1, 7, 3], [2, 4]], choices[:1])


def test_batched_generation_must_return_exactly_the_tokens_asked_for():
    check_token_counts([{"index": 0, "token_ids": [5, 6]}, {"index": 1, "token_ids": [7, 8]}], 2, 2)
    with pytest.raises(RuntimeError, match=r"2 choices with \[1, 2\] tokens"):
        check_token_counts([{"index": 0, "token_ids": [5, 6]}, {"index": 1, "token_ids": [7]}], 2, 2)
    with pytest.raises(RuntimeError, match=r"1 choices"):
        check_token_counts([{"index": 0, "token_ids": [5, 6]}], 2, 2)


def test_engine_close_stops_what_it_started_once():
    import types
    stops = []
    info = EngineInfo("vllm", "cuda", "bfloat16", "auto", max_positions=4096, load_seconds=1.0)
    engine = VllmEngine(info, None, types.SimpleNamespace(close=lambda: stops.append(1)))
    engine.close()
    engine.close()
    assert stops == [1] and engine.server is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed: the server would start")
def test_a_server_that_dies_at_start_is_reported_with_its_log(monkeypatch, tmp_path):
    monkeypatch.setenv("QMX_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"(?s)vllm serve did not start \(exit 1\).*No module named .vllm"):
        start({"model": str(tmp_path)})


def test_close_stops_children_left_after_the_server_process_exited(tmp_path):
    """vLLM's engine core is a child of the API process: when the API process is gone first, the child
    still holds the GPU. close() stops the whole process group (real processes here)."""
    import signal
    import subprocess

    from jobs.serving.vllm_server import VllmServer

    pid_file = tmp_path / "child"
    proc = subprocess.Popen(["bash", "-c", f"sleep 300 & echo $! > {pid_file}; exit 0"], start_new_session=True)
    proc.wait()
    child = int(pid_file.read_text())
    os.kill(child, 0)                                   # alive, though its parent has exited
    VllmServer("http://127.0.0.1:1", proc, str(tmp_path / "log"), 0.0).close()
    if not _gone(child, 10):
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the server's child outlived close()")


def _within(timeout_s: float, check) -> bool:
    """Whether `check()` turns true within `timeout_s` (polled every 50 ms)."""
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone(pid: int, timeout_s: float = 15.0) -> bool:
    return _within(timeout_s, lambda: not _alive(pid))


def test_group_guard_passes_the_exit_status_and_ends_what_the_command_left(tmp_path):
    import signal
    import subprocess
    import sys

    from jobs.serving.vllm_server import GUARD

    def guard(command: str, parent: int = os.getpid()) -> int:
        return subprocess.run([sys.executable, str(GUARD), "5", str(parent), "bash", "-c", command],
                              start_new_session=True, timeout=30).returncode

    pid_file = tmp_path / "child"
    code = guard(f"sleep 300 & echo $! > {pid_file}; exit 3")
    child = int(pid_file.read_text())
    if not _gone(child, 5):
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the command's child outlived the guard")
    assert code == 3
    assert guard("kill -KILL $$") == 128 + signal.SIGKILL          # a signal's death, as a shell reports it
    # a guard whose parent is already gone (the worker died before the parent-death signal was armed)
    assert guard(f"touch {tmp_path / 'ran'}", parent=1) == 128 + signal.SIGTERM
    assert not (tmp_path / "ran").exists()



def test_a_group_of_zombies_is_gone(tmp_path):
    """An exited engine core that nobody reaps (a container's PID 1 may never) must not hold up the next cell."""
    import subprocess
    import sys

    from jobs.serving.vllm_server import _group_alive

    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)   # leads its own group
    assert _within(15, lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    try:
        assert not _group_alive(proc.pid)         # its only member is a zombie
    finally:
        proc.wait()
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert _group_alive(live.pid)
    finally:
        live.kill()
        live.wait()

_FAKE_SERVE = '''
import http.server, multiprocessing, os, sys, time

def engine_core(pid_file):             # vLLM's engine core: a spawned child holding the GPU
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    port = int(sys.argv[sys.argv.index("--port") + 1])
    multiprocessing.get_context("spawn").Process(target=engine_core, args=(os.environ["CORE_PID_FILE"],)).start()
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):      # no access log in the server's output
            return None
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


def test_a_killed_worker_takes_the_servers_engine_core_with_it(tmp_path):
    """The failure of 2026-12-02: a sweep interrupted while a cell's server ran; the Ray worker died,
    the API process got its parent-death signal, and the spawned engine core lived on with 124 GiB of
    the GPU. Here a real worker process starts a server through `start` (a stand-in `vllm` package
    whose server spawns a child as vLLM does) and is SIGKILLed: the child must go too."""
    import signal
    import subprocess
    import sys

    cli = tmp_path / "fake" / "vllm" / "entrypoints" / "cli"
    cli.mkdir(parents=True)
    for d in (cli, cli.parent, cli.parent.parent):
        (d / "__init__.py").write_text("")
    (cli / "main.py").write_text(_FAKE_SERVE)
    core_pid = tmp_path / "core.pid"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), str(root)]),
           "QMX_CACHE": str(tmp_path / "cache"), "CORE_PID_FILE": str(core_pid)}
    worker = subprocess.Popen([sys.executable, "-c", "import time\nfrom jobs.serving.vllm_server import start\n"
                               "start({'model': 'm'})\nprint('up', flush=True)\ntime.sleep(600)"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "up"
        assert _within(30, lambda: core_pid.exists() and core_pid.read_text())
        core = int(core_pid.read_text())
        assert _alive(core)
    finally:
        worker.kill()
        worker.wait()
    if not _gone(core):
        os.killpg(os.getpgid(core), signal.SIGKILL)      # the guard and the stand-in server too
        raise AssertionError("the engine core outlived the worker that started its server")

