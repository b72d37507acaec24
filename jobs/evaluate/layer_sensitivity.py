"""Per-layer sensitivity: how far each linear layer of the cell moves its output from the baseline's.

Where the quality went, layer by layer: which layers to keep in 16 bits. The unquantized base runs a
text (`corpus`, the first `max_tokens` tokens, in windows of `context` tokens with BOS prepended);
at every linear layer L the input x it receives is also fed to the cell's module of the same name,
L_q, and over all tokens of all windows

    rel_error(L) = ||L_q(x) - L(x)||_F / ||L(x)||_F        (outputs [tokens, out_features], bias included)

L_q is whatever the engine loaded (bitsandbytes Linear4bit / Linear8bitLt, GPTQModel's QuantLinear
kernels, compressed-tensors layers or the dense Linear transformers decompresses them into), run through
its own forward: the figure is what the cell's kernel computes. Every layer sees the *base's*
activations, so it is that layer's own error, not what earlier layers passed on to it (the KL evaluator
measures the whole). A layer the cell kept in 16 bits has the base's weights and scores 0; the baseline
cell against itself is that noise floor. The reference is the base in the engine's compute dtype on its
device, loaded beside the cell for the duration (as the KL evaluator's reference is): peak memory
includes it.

Rows go to the `layer_sensitivity` table (matrix.results); metrics: layer_error_max (the worst layer
named in its settings) and layer_error_mean over the layers the cell quantized. Needs the cell's layers
in this process (`in_process_weights` in matrix.engines.ENGINES); elsewhere it returns a note.
"""
from __future__ import annotations

import json
import re
from typing import Any

from jobs.evaluate import Evaluation, Metric
from jobs.evaluate.perplexity import corpus_token_ids

# bits of the quantized linear classes that do not carry their own `bits` attribute (bitsandbytes)
_CLASS_BITS = {"Linear4bit": 4, "LinearNF4": 4, "LinearFP4": 4, "Linear8bitLt": 8}
_BLOCK_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_PEFT_PREFIX = "base_model.model."      # an unmerged adapter wraps the cell's model (jobs.adapters)
FORMULA = "||cell(x) - base(x)||_F / ||base(x)||_F per layer over all tokens; x: the base's input to that layer"


def _windows(ids: list[int], context: int, bos: int | None) -> list[list[int]]:
    prefix = [bos] if bos is not None else []
    return [prefix + ids[i:i + context] for i in range(0, len(ids), context)]


def _device_of(module):
    import itertools
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return None if first is None else first.device


def _bits(module, kept: bool) -> int | None:
    """The bits the cell's layer ran at, where its module says so."""
    if kept:
        return 16
    for attr in ("bits", "num_bits", "w_bit"):        # GPTQModel / AutoGPTQ / AutoAWQ kernels
        if isinstance(value := getattr(module, attr, None), int):
            return value
    weights = getattr(getattr(module, "quantization_scheme", None), "weights", None)    # compressed-tensors
    if isinstance(getattr(weights, "num_bits", None), int):
        return weights.num_bits
    return _CLASS_BITS.get(type(module).__name__)


def _kept(cell_module, base_module) -> bool:
    """The cell's layer is the base's, unquantized: same class, bit-identical weights."""
    import torch
    if cell_module is base_module:
        return True
    if type(cell_module) is not type(base_module):
        return False
    w = getattr(cell_module, "weight", None)
    return isinstance(w, torch.Tensor) and w.shape == base_module.weight.shape and \
        torch.equal(w, base_module.weight.to(w.device, w.dtype))


def layer_errors(base, cell_modules: dict[str, Any], windows: list[list[int]], device: str):
    """{layer name: (squared error sum, squared reference sum)} over `windows`, for every nn.Linear of
    `base` that `cell_modules` has, and the names it lacks."""
    import torch
    linears = {name: m for name, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [n for n in linears if n not in cell_modules]
    sums = {n: [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)]
            for n in linears if n not in missing}
    busy: set[str] = set()      # the baseline compares a module with itself: no hook inside its own hook

    def hook_for(name: str):
        target = cell_modules[name]
        to = _device_of(target)

        def hook(_module, inputs, output):
            if name in busy:
                return
            busy.add(name)
            try:
                x = inputs[0]
                got = target(x if to is None or x.device == to else x.to(to))
                ref = output.double()
                sums[name][0] += (got.to(ref.device).double() - ref).square().sum().cpu()
                sums[name][1] += ref.square().sum().cpu()
            finally:
                busy.discard(name)
        return hook

    handles = [linears[n].register_forward_hook(hook_for(n)) for n in sums]
    try:
        with torch.inference_mode():
            for window in windows:
                base(torch.tensor([window], device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: (s[0].item(), s[1].item()) for n, s in sums.items()}, missing


def _cell_modules(model) -> dict[str, Any]:
    return {name.removeprefix(_PEFT_PREFIX): m for name, m in model.named_modules()}


def evaluate(engine, settings: dict[str, Any]) -> Evaluation:
    if not engine.capabilities.in_process_weights:
        return Evaluation([], notes=(f"layer_sensitivity not measured on the {engine.name} engine: it needs the "
                                     "cell's layers in this process (hf engine)",))
    if engine.base_path is None:
        raise ValueError(f"engine {engine.name!r} does not name its base model; layer_sensitivity needs it")
    import torch
    corpus, max_tokens, context = settings["corpus"], int(settings["max_tokens"]), int(settings["context"])
    ids = corpus_token_ids(engine.tokenizer, corpus, max_tokens)
    windows = _windows(ids, context, engine.tokenizer.bos_token_id)
    with torch.inference_mode():
        # a model prepared lazily is run once first: compressed-tensors decompresses its layers at the first
        # forward, and until then they hold no `weight` for their own forward to use
        engine.model(torch.tensor([windows[0][:8]], device=engine.device))
    cell = _cell_modules(engine.model)
    from jobs.engines.hf import load_base_model
    base = engine.model if engine.is_base else load_base_model(engine)
    try:
        errors, missing = layer_errors(base, cell, windows, engine.device)
        linears = {n: m for n, m in base.named_modules() if n in errors}
        kept = {n: _kept(cell[n], m) for n, m in linears.items()}
        params = {n: sum(p.numel() for p in m.parameters()) for n, m in linears.items()}
    finally:
        if base is not engine.model:
            del base
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    common = dict(corpus=corpus, max_tokens=max_tokens, context=context, tokens=sum(map(len, windows)),
                  reference=f"unquantized base, {engine.compute_dtype}", formula=FORMULA)
    row_settings = json.dumps(common, sort_keys=True)
    rows = []
    for name, (err2, ref2) in errors.items():
        index = _BLOCK_INDEX.search(f".{name}.")
        rows.append({"layer": name, "layer_index": int(index[1]) if index else None, "kind": name.rsplit(".", 1)[-1],
                     "module": type(cell[name]).__name__, "params": params[name],
                     "bits": _bits(cell[name], kept[name]), "kept": kept[name],
                     "rel_error": (err2 / ref2) ** 0.5 if ref2 > 0 else 0.0, "settings": row_settings})
    notes = (f"layer_sensitivity: {len(missing)} base layers have no module of that name in the cell "
             f"(e.g. {missing[0]})",) if missing else ()
    if not rows:
        return Evaluation([], notes=notes + ("layer_sensitivity: no linear layer matched",))
    worst = max(rows, key=lambda r: r["rel_error"])
    quantized = [r["rel_error"] for r in rows if not r["kept"]]
    return Evaluation([
        Metric.of("layer_error_max", worst["rel_error"], "ratio", "lower", layer=worst["layer"], kind=worst["kind"],
                  layers=len(rows), **common),
        # the baseline quantizes no layer: its mean is 0 by definition (every row above scores ~0 too)
        Metric.of("layer_error_mean", sum(quantized) / len(quantized) if quantized else 0.0, "ratio", "lower",
                  layers=len(quantized), averaged_over="layers not kept in 16 bits", **common),
    ], {"layer_sensitivity": rows}, notes=notes)
