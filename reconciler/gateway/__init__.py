"""The OpenAI-compatible gateway: one endpoint for every model, in its own process.

routes.py   the routing table the daemon writes (build_routes, write_routes)
service.py  GatewayService: the daemon starts, watches and stops the gateway process with it
server.py   the process's HTTP server; table.py its live table and balancer; metrics.py
"""
