"""The HTTP API for the ERP and people: machines, states, intervals (FastAPI)."""
