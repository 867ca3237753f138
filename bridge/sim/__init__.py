"""Machine simulators: a seeded scenario engine and the CNC controllers it drives."""
