"""Safe rollout: each new version is verified on the serving stack before it gets traffic.

- `state`: the one record per model (stable, candidate, previous, split, verifications,
  events) and its store: atomic writes, a lock per model, read by every worker and replica.
- `routing`: the per-process view of those records that picks the version of an unpinned
  request, re-read within ``GATEWAY_ROLLOUT_REFRESH_S``.
- `stats`: per-worker windowed counters (requests, errors, latency, shadow comparisons)
  shared through files, which the controller sums.
- `verify`: golden images through the gateway's own decoding and preprocessing and the real
  Triton, pinned to the candidate: fidelity and quality checks.
- `controller`: the loop (one per machine, elected by a file lock) that adopts, loads,
  verifies, promotes and rolls back.
docs/rollout.md explains the design.
"""
