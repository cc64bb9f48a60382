"""`kubectl apprelease`: the kubectl plugin for on-call people (status, history, undo, diff, logs, ...).

`kubectl rollout` knows Deployments and DaemonSets, not custom resources; this plugin gives an
AppRelease the same verbs. Layers, as elsewhere: `views` decides and formats (pure: API
objects in, rows and verdicts out, with the operator's and the agents' own planners), `kube`
makes the API calls, `logclient` reads the agents' log endpoints, `cli` wires the commands
(`kubectl-apprelease`, a console script, so kubectl finds it on PATH). A CLI-level room: it
may import api and the pure planners; nothing below it imports it.
"""
