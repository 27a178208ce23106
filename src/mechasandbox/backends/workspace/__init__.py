"""Protection of the workspace shared by the backends that cover protected paths with mounts
(bubblewrap; docker and podman, on Linux and in macOS's VMs): the placeholders made for
missing protected paths and their removal (`placeholders`, `placeholder_stash`), the
coordination of several processes' runs in one workspace (`workspace_locks`), and the watch
on the host paths those mounts stand on (`guards`). Platform-neutral: plain POSIX files."""
