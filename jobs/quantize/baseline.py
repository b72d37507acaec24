"""The unquantized baseline: the model's own weights, loaded in the engine's dtype."""
from jobs.quantize import Backend

BACKEND = Backend(name="none", format="bf16 safetensors", libraries=("transformers", "torch"))
