"""Prometheus metrics (docs/operations.md, "Metrics").

Importing this package does not import prometheus-client: `siphera.metrics.procdir` must
choose each process's multiprocess directory before prometheus-client is first imported
(it decides then whether values live in files shared between processes). The metrics
themselves are in `siphera.metrics.instruments`.
"""
