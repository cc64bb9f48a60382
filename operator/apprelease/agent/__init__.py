"""The in-cluster agent: watches its node's HostReleases and drives the host data plane.

`cluster` (threads: watch, work queue, resync) decides through `sync` (pure), talks to the
apiserver through `kube`, and does host work through `..host.core`. `cli` wires the
`apprelease agent` commands, the standalone ones included.
"""
