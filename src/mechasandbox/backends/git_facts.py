"""What the search for git indirections remembers across runs (see `git_indirections`).

Before each run a backend that protects the workspace reads the configuration files git
would read and walks the workspace for nested repositories, and after it walks again
(`git_new_repositories`). Both are mostly unchanged from one run to the next, so they are
kept: the files parsed (`ParsedConfigs`) and the directories listed (`NestedWalker`),
each reused only while its file or directory is unchanged.
"""

from __future__ import annotations

from mechasandbox.backends.git_config import ParsedConfigs
from mechasandbox.backends.git_walk import NestedWalker


class GitFacts:
    """The parsed configuration files and the workspaces' listings of a backend's runs.

    State of the backends that protect the workspace (bubblewrap, landlock, seatbelt,
    docker, podman): a backend built directly has its own, a composition root shares one.
    It holds nothing outside the process: `close` only forgets (idempotent)."""

    def __init__(self) -> None:
        self.configs = ParsedConfigs()
        self.walker = NestedWalker()

    def close(self) -> None:
        self.configs.close()
        self.walker.close()
