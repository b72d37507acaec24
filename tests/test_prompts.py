"""The user's prompt set: the JSONL reader, and generations that equal direct greedy generation."""
from __future__ import annotations

import json
import types

import pyarrow as pa
import pytest

from jobs.evaluate import TABLE_SCHEMAS, run_evaluator
from jobs.evaluate.prompts import read_prompts

from conftest import baseline_engine

EXAMPLE = "matrix/specs/prompts-example.jsonl"


def test_example_prompt_file_reads_with_ids():
    rows = read_prompts(EXAMPLE)
    assert len(rows) == 8 and rows[0] == ("capital", "The capital of France is")
    assert read_prompts(EXAMPLE, limit=3) == rows[:3]


def test_ids_default_to_line_numbers_and_must_be_unique(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n\n{"prompt": "b", "id": "x"}\n')
    assert read_prompts(str(f)) == [("1", "a"), ("x", "b")]
    f.write_text('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n')
    with pytest.raises(ValueError, match="not unique"):
        read_prompts(str(f))
    f.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="prompt"):
        read_prompts(str(f))


def _direct(engine, prompt: str, n: int) -> str:
    import torch
    enc = engine.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = engine.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=engine.tokenizer.eos_token_id)
    return engine.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("model", ["builtin:tiny-llama", "builtin:smollm2-135m-instruct"])
def test_generations_match_direct_greedy_generation(model):
    engine = baseline_engine(model)
    settings = {"path": EXAMPLE, "max_new_tokens": 6, "limit": 3}
    result = run_evaluator("prompts", engine, settings)
    rows = result.tables["generations"]
    assert [r["prompt_id"] for r in rows] == ["capital", "explain-quantization", "python-fib"]
    for r in rows:
        assert r["output"] == _direct(engine, r["prompt"], 6)
        assert 1 <= r["output_tokens"] <= 6 and r["seconds"] > 0
        assert json.loads(r["settings"])["max_new_tokens"] == 6
    pa.Table.from_pylist(rows, schema=TABLE_SCHEMAS["generations"])
    m = {x.name: x for x in result.metrics}
    assert m["prompts_run"].value == 3
    assert m["prompts_mean_output_tokens"].value == pytest.approx(sum(r["output_tokens"] for r in rows) / 3)
    assert m["prompts_total_seconds"].value == pytest.approx(sum(r["seconds"] for r in rows))
    assert len(json.loads(m["prompts_run"].settings)["sha256"]) == 16
    if model.endswith("smollm2-135m-instruct"):
        assert "Paris" in rows[0]["output"]       # real weights, real answer


def test_vllm_branch_asks_the_cells_server_for_greedy_tokens():
    """The GPU path's glue against a real HTTP server on loopback that answers as `vllm serve` does
    (the real server runs on the GPU host): token-id prompts, greedy, the counts it returns."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Completions(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, payload))
            body = json.dumps({"choices": [{"index": 0, "text": " four words of text",
                                            "token_ids": [1, 2, 3, 4]}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass                 # keep the test's output to its assertions

    server = ThreadingHTTPServer(("127.0.0.1", 0), Completions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tokenizer = lambda text: {"input_ids": [len(w) for w in text.split()]}  # noqa: E731
        from jobs.engines import EngineInfo
        from jobs.engines.vllm import VllmEngine
        engine = VllmEngine(EngineInfo("vllm", "cuda", "bfloat16", "auto", max_positions=4096, load_seconds=0.0),
                            tokenizer, types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}"))
        result = run_evaluator("prompts", engine, {"path": EXAMPLE, "max_new_tokens": 5, "limit": 2})
    finally:
        server.shutdown()
    first = read_prompts(EXAMPLE)[0][1]
    assert seen[0] == ("/v1/completions", {"prompt": [tokenizer(first)["input_ids"]], "max_tokens": 5,
                                           "temperature": 0.0, "return_token_ids": True})
    assert len(seen) == 2 and [r["output_tokens"] for r in result.tables["generations"]] == [4, 4]
