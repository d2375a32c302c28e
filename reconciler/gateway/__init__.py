"""The OpenAI-compatible gateway: one endpoint for every model, in its own process.

The daemon's side: routes.py (the routing table the daemon writes), service.py (GatewayService:
the daemon starts, watches, drains and stops the gateway process; attach wires it into `run`),
demand.py (who waits for on-demand models). The process's side: server.py (its HTTP surface,
keys and queues), clients.py (connections, request heads, bodies), table.py (its live table and
balancer), relay.py (to an engine and back, with failover), upstream.py and framing.py (the
client for engines), errors.py (refusals in OpenAI's shape), metrics.py (what clients feel).
"""
