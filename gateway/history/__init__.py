"""Analysis history: one row per answered image, per API key, in SQLite or PostgreSQL.

``schema`` declares the table, ``ids`` makes the sortable row ids, ``store`` reads and writes
through SQLAlchemy (one pool per worker process, created lazily, every statement bounded),
``migrations`` applies Alembic's scripts (``python -m gateway.history upgrade``) and refuses a
schema that is behind, ``retention`` purges old rows in bounded batches.
"""
