"""The matrix: a typed sweep spec, its expansion into cells, validity rules and stable ids.

Knows nothing of Ray, of the jobs that run cells, or of the results store.
"""
from matrix.spec import SweepSpec, load_spec, SpecError
from matrix.cells import Cell, SkippedCell
from matrix.expand import expand_matrix, Expansion

__all__ = ["SweepSpec", "load_spec", "SpecError", "Cell", "SkippedCell", "expand_matrix", "Expansion"]
