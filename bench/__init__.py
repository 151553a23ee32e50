"""`python -m bench`: measure the serving path against its limits and the seed-style baseline."""
