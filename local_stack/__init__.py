"""Run the whole stack on this machine: local Triton plus the gateway under gunicorn (`make run`)."""
