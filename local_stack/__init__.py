"""Run the whole stack here: local Triton plus the gateway under gunicorn (`make run`).

local_stack.gateway_server.GatewayServer is the one way the gateway is started (here, by the
benchmark and by the end-to-end tests), beside local_triton's TritonServer.
"""
