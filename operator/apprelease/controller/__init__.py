"""The operator: fans an AppRelease out to one HostRelease per selected Node and rolls it across hosts.

Layers (lower never imports higher): `plan` and `status` (pure decisions) <- `kube` (API calls
and conversions) and `reconcile` (one pass: read, decide, act) <- `handlers` (Kopf wiring) and
`cli` (`apprelease operator`).
"""
