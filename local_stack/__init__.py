"""Run the whole stack here: local Triton plus the gateway under gunicorn (`make run`)."""
