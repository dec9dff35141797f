"""The bundle registry command: push bundles, list them, move and read aliases (``services/_registry.py``)."""
