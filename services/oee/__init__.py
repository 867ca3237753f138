"""OEE and losses from the record: the arithmetic (engine.py) and its reader (report.py)."""
