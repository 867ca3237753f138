"""Machine state, and (later) job, shift and reasons: the record of what the machines really did."""
