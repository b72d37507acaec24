"""Results: the Parquet store (atomic per-cell writes), DuckDB views, rankings, leaderboards.

Reads only the store; knows nothing of Ray or of how cells ran.
"""
