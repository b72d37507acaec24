"""`qmx plan` reads configs only: a builtin model's config comes from its GGUF header, no weights built."""
from __future__ import annotations

from jobs import models
from matrix.estimate import Shape


def test_builtin_configs_are_read_without_building_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("QMX_CACHE", str(tmp_path))     # nothing built yet
    smollm2 = models.read_config("builtin:smollm2-135m-instruct")
    tiny = models.read_config("builtin:tiny-llama")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    # SmolLM2-135M's published architecture, read from the header
    assert (smollm2["num_hidden_layers"], smollm2["hidden_size"], smollm2["intermediate_size"],
            smollm2["num_attention_heads"], smollm2["num_key_value_heads"], smollm2["vocab_size"]) == \
        (30, 576, 1536, 9, 3, 49152)
    # the tiny model's shapes are its builder's, on SmolLM2's vocabulary
    assert Shape.from_config(tiny) == Shape.from_config(models._tiny_config(49152, None, None).to_dict())


def test_a_built_folder_is_read_as_built(tmp_path, monkeypatch):
    monkeypatch.setenv("QMX_CACHE", str(tmp_path))
    built = tmp_path / "models" / "tiny-llama"
    built.mkdir(parents=True)
    (built / "config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 2, "marker": true}')
    assert models.read_config("builtin:tiny-llama")["marker"] is True
