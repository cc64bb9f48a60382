"""The host agent: reconciles one host towards its HostRelease specs.

Layers: `plan` (pure decisions) <- executors (`builder`, `supervisors`, `proxy`, `users`)
<- `core` (applies a plan and reports status) <- CLI / in-cluster loop (wiring).
"""
