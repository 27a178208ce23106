"""Resource limits: the pure rlimit applier and cgroup handling."""
