"""The HTTP face of `reconciler run`: status API, git webhook, Prometheus metrics, the dashboard.

The API only reads and asks: desired state comes from git alone, so there is no route that
changes a spec. Two actions exist, both a request to the loop: reconcile now, restart a model.

One module per route group: probes (/healthz, /readyz, /metrics), status (/status, /history),
models, gpus, plan, event_routes (list and server-sent stream), actions (reconcile, restart),
webhook (/hooks/git), dashboard (/ and /web). Beside them: views (what the routes read of the
daemon), responses (the response models), auth (who may act), body (size limit, JSON parsing),
cache, app (assembles
them), link (the socket pair to the daemon: metrics and actions), server (ApiService: the
daemon's owner of the API process) and __main__ (the API process itself).

The API serves from a process of its own: it reads the files the daemon writes (the state
file, the last valid desired state, events.jsonl, the bulletin loop.json) and asks the daemon
only for metrics and actions, so HTTP traffic never takes the loop's interpreter.

Who may ask: auth.py (actions), webhook.py (the signed hook); GETs are open to whoever reaches
the port (status, plan, events, logs): on a non-loopback address put it behind a network
boundary you trust.

Nothing is imported here, so that `reconciler events` reads the event log without loading the
web stack: import `reconciler.api.app.create_app`.
"""
