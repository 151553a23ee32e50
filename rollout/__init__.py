"""The operator's command line for safe rollout: ``python -m rollout --help``.

The commands live in gateway/rollout/cli.py, beside the records they change; this package
only gives them the short name.
"""
