"""The host data plane: makes one Linux host serve the HostRelease specs it is given.

No Kubernetes here (an import-linter contract holds that line): the standalone
`apprelease agent reconcile` and the in-cluster agent (`agent/`) both drive it.

Layers: `plan`, `servers`, `watchers` (pure decisions) <- executors (`builder`,
`supervisors/`, `proxy/`, `users`, `health`) <- `core` (observes the host, applies a plan,
reports a status).
"""
