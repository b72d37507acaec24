"""Work that runs on a worker (GPU or CPU): quantize, load an engine, evaluate.

A job takes a `matrix.Cell` and returns Arrow tables; it knows nothing of Ray or of the store.
Heavy libraries (torch, transformers, bitsandbytes, llmcompressor) are imported inside the
functions that need them, so importing this package is instant.
"""
