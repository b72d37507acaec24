"""Ray: connect to a cluster or start an embedded one, and drive a sweep across it."""
