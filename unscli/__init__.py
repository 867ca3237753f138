"""The `uns` command: its wiring (cli), the demo, the processes it runs and `uns probe`. It sits above
everything else (uns/, bridge/, services/); nothing imports it but its own entry point and tests."""
