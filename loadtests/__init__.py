"""Load tests: locust scenarios, the invariant check, and the one-command run."""
