"""AWQ through AutoAWQ (`awq`): a legacy backend, run only where its library imports.

AutoAWQ is deprecated upstream (0.2.9 is source-only; the project was adopted by llm-compressor)
and transformers 5 dropped its integration. Where an older environment has it, it writes an AWQ
checkpoint (`quant_method: awq`, GEMM layout). On a modern stack the same algorithm is
`backend: llmcompressor` (AWQModifier, saved as compressed-tensors, which vLLM and transformers
load); a published AutoAWQ checkpoint is measured with `prequantized`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.quantize import Backend, Calibration, guarded_import
from matrix import Cell
from matrix.methods import resolved_options

_DEAD = "AutoAWQ is deprecated (adopted by llm-compressor); backend llmcompressor runs AWQ"


def _quantize(cell: Cell, base: str, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    if cell.method != "awq" or calibration is None:
        raise ValueError(f"the autoawq backend implements calibrated awq, not {cell.method}")
    opts = resolved_options(cell.method, cell.options)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoAWQForCausalLM.from_pretrained(base, trust_remote_code=cell.trust_remote_code)
    config = {"w_bit": cell.bits, "q_group_size": cell.group_size or -1, "version": "GEMM",
              "zero_point": not bool(opts["symmetric"])}
    # AutoAWQ takes text; decoding our token chunks gives it the same calibration text
    texts = [tok.decode(s) for s in calibration.samples]
    model.quantize(tok, quant_config=config, calib_data=texts, n_samples=len(texts),
                   max_calib_seq_len=calibration.record["seq_len"],
                   modules_to_not_convert=[m for m in opts["ignore"] if m != "lm_head"] or None)
    model.save_quantized(str(out))
    tok.save_pretrained(out)
    return {"scheme": f"AWQ W{cell.bits}A16 group {cell.group_size} GEMM", "notes": []}


BACKEND = Backend(name="autoawq", format="awq", quantize=_quantize,
                  libraries=("autoawq", "transformers", "torch"), requires=("awq",),
                  hint=_DEAD, check=lambda: guarded_import("awq", _DEAD))
