"""Git's indirections as a command would use them: each scenario prepares a workspace on
the host as a user (or a cloned repository) would have it, gives the script a sandboxed
command runs to plant a command there, and the host's git invocation that would run it.

Every backend's security suite runs them all: the planted command must not run on the
host afterwards (`marker` must not appear), and git must keep working in the sandbox.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs

GIT = ("git", "-c", "user.email=a@b", "-c", "user.name=a", "-c", "protocol.file.allow=always")


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, check=False)


def git_ok(*args: str, cwd: Path) -> None:
    done = git(*args, cwd=cwd)
    assert done.returncode == 0, (args, done.stderr)


@attrs.frozen(kw_only=True)
class GitAttack:
    """`prepare(workspace, outside)` on the host; `script(marker)` in the sandbox (in the
    workspace); `host(workspace, outside)`: the directory where the host's git then runs
    `git status` and `git commit`."""

    name: str
    prepare: Callable[[Path, Path], None]
    script: Callable[[str], str]
    host: Callable[[Path, Path], Path] = lambda workspace, _outside: workspace
    needs_git: bool = False  # the script runs git in the sandbox


def _repository(workspace: Path) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    git_ok("init", "-q", cwd=workspace)
    (workspace / "README").write_text("x\n")
    git_ok("add", "README", cwd=workspace)
    git_ok("commit", "-qm", "init", cwd=workspace)


def _hook(marker: str) -> str:
    """Shell that writes an executable hook planting `marker` into the file `$1`."""
    body = f"#!/bin/sh\\ntouch {marker}\\n"
    return f"printf '{body}'"


def _fsmonitor(marker: str) -> str:
    return f"printf '[core]\\n\\tfsmonitor = \"touch {marker}; false\"\\n'"


def _git_config_fsmonitor(marker: str) -> str:
    return f'config core.fsmonitor "touch {marker}; false"'


def _husky(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    git_ok("config", "core.hooksPath", ".husky", cwd=workspace)
    (workspace / ".husky").mkdir()


def _hooks_missing(workspace: Path, _outside: Path) -> None:
    """A missing hooks directory in a directory of the workspace (Landlock's carving alone
    refuses new entries at the top level)."""
    _repository(workspace)
    (workspace / "tools").mkdir()
    git_ok("config", "core.hooksPath", "tools/hooks", cwd=workspace)


def _plant_hooks(directory: str) -> Callable[[str], str]:
    def script(marker: str) -> str:
        return f"mkdir -p {directory}; " + " ".join(
            f"{_hook(marker)} > {directory}/{hook}; chmod +x {directory}/{hook};"
            for hook in ("pre-commit", "post-commit", "post-index-change")
        )

    return script


def _included(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    git_ok("config", "include.path", "../shared.gitconfig", cwd=workspace)
    (workspace / "shared.gitconfig").write_text("[color]\n\tui = auto\n")


def _included_missing(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    (workspace / "config").mkdir()
    git_ok("config", "includeIf.onbranch:*.path", "../config/local.gitconfig", cwd=workspace)


def _fsmonitor_script(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    script = workspace / "tools" / "fsmonitor.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    git_ok("config", "core.fsmonitor", "tools/fsmonitor.sh", cwd=workspace)


def _linked_worktree(workspace: Path, outside: Path) -> None:
    _repository(workspace)
    (workspace / "src").mkdir()  # where even Landlock's carved workspace takes new entries
    git_ok("worktree", "add", "-q", str(outside / "wt"), cwd=workspace)


def _nested(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    _repository(workspace / "vendor" / "lib")


def _with_src(workspace: Path, _outside: Path) -> None:
    _repository(workspace)
    (workspace / "src").mkdir()


def _submodule(workspace: Path, outside: Path) -> None:
    _repository(outside / "lib")
    _repository(workspace)
    (workspace / "src").mkdir()
    git_ok("submodule", "add", "-q", str(outside / "lib"), "sub", cwd=workspace)
    git_ok("commit", "-qm", "sub", cwd=workspace)


GIT_ATTACKS: tuple[GitAttack, ...] = (
    GitAttack(name="hooks-path", prepare=_husky, script=_plant_hooks(".husky")),
    GitAttack(
        name="hooks-path-missing", prepare=_hooks_missing, script=_plant_hooks("tools/hooks")
    ),
    GitAttack(
        name="include-path",
        prepare=_included,
        script=lambda marker: f"{_fsmonitor(marker)} >> shared.gitconfig",
    ),
    GitAttack(
        name="include-if-missing",
        prepare=_included_missing,
        script=lambda marker: f"{_fsmonitor(marker)} > config/local.gitconfig",
    ),
    GitAttack(
        name="fsmonitor-script",
        prepare=_fsmonitor_script,
        script=lambda marker: f"{_hook(marker)} > tools/fsmonitor.sh",
    ),
    GitAttack(
        name="worktree-commondir",
        prepare=_linked_worktree,
        script=lambda marker: (
            f"cp -r .git src/evil; {_fsmonitor(marker)} >> src/evil/config; "
            "echo ../../../src/evil > .git/worktrees/wt/commondir"
        ),
        host=lambda _workspace, outside: outside / "wt",
    ),
    GitAttack(
        name="nested-repository",
        prepare=_nested,
        script=lambda marker: f"{_fsmonitor(marker)} >> vendor/lib/.git/config",
        host=lambda workspace, _outside: workspace / "vendor" / "lib",
    ),
    GitAttack(
        name="submodule-gitfile",
        prepare=_submodule,
        script=lambda marker: (
            "cp -r .git/modules/sub src/evil; "
            f"{_fsmonitor(marker)} >> src/evil/config; "
            "sed -i /worktree/d src/evil/config; "
            "echo 'gitdir: ../src/evil' > sub/.git"
        ),
    ),
    # Repositories made during the run: disarmed after it.
    GitAttack(
        name="new-repository",
        prepare=_with_src,
        script=lambda marker: (
            "mkdir src/evil; cp -r .git src/evil/.git; "
            f"{_fsmonitor(marker)} >> src/evil/.git/config"
        ),
        host=lambda workspace, _outside: workspace / "src" / "evil",
    ),
    GitAttack(
        # Below a directory that looks like a bare repository (HEAD, objects, refs), where a
        # search that stops at repositories would not look (its HEAD is no ref: the host's
        # git, looking upwards from the one below, does not take it for a repository).
        name="new-repository-under-bare-lookalike",
        prepare=_with_src,
        script=lambda marker: (
            "mkdir -p src/vendor/objects src/vendor/refs src/vendor/evil; "
            "echo lookalike > src/vendor/HEAD; cp -r .git src/vendor/evil/.git; "
            f"{_fsmonitor(marker)} >> src/vendor/evil/.git/config"
        ),
        host=lambda workspace, _outside: workspace / "src" / "vendor" / "evil",
    ),
    GitAttack(
        name="new-gitlink",
        prepare=_with_src,
        script=lambda marker: (
            "git init -q src/evil && git -C src/evil -c user.email=a@b -c user.name=a "
            "commit -q --allow-empty -m x && "
            f"git -C src/evil {_git_config_fsmonitor(marker)} && git add src/evil && echo added"
        ),
        needs_git=True,
    ),
)


def planted_ran(attack: GitAttack, workspace: Path, outside: Path, marker: Path) -> str | None:
    """Runs the host's `git status` and `git commit` where the attack aims; what ran the
    planted command (None: nothing did)."""
    where = attack.host(workspace, outside)
    for args in (("status",), ("commit", "-q", "--allow-empty", "-m", "after")):
        git(*args, cwd=where)
        if marker.exists():
            return f"git {args[0]} in {where}"
    return None


def sandboxed_script(attack: GitAttack, marker: Path, *, with_git: bool = True) -> str:
    """The attack, then git in the sandbox (it must keep working there; `with_git`: false
    where the sandbox has no git, as the containers' test image)."""
    then = "git status --porcelain > /dev/null && echo git-works; " if with_git else ""
    return f"{attack.script(shlex.quote(str(marker)))} 2>/dev/null; {then}echo end"


# A protected path's cover taken off during the run: the host removes the empty `.vscode`
# placeholder (and makes it anew), and the command, writing at once, makes a repository
# below it before the watcher's next look. See the backends' `..._replaced_placeholder_...`
# tests.
PLACEHOLDER = ".vscode"
_BELOW = f"{PLACEHOLDER}/evil"


def replace_placeholder(workspace: Path) -> None:
    """The host's part: the placeholder removed and made anew (the command's `mkdir -p`
    may have made it first)."""
    (workspace / PLACEHOLDER).rmdir()
    (workspace / PLACEHOLDER).mkdir(exist_ok=True)


def plant_below_placeholder(marker: Path) -> str:
    """The command's part: `touch started`, then a repository with `core.fsmonitor` below
    the placeholder as soon as it can be made, then a wait for the stop."""
    gitdir = f"{_BELOW}/.git"
    fsmonitor = shlex.quote(f'[core]\n\tfsmonitor = "touch {marker}; false"\n')
    return (
        "touch started; "
        f"until mkdir -p {gitdir}/hooks {gitdir}/objects {gitdir}/refs 2>/dev/null; do :; done; "
        f"echo 'ref: refs/heads/main' > {gitdir}/HEAD; "
        f"printf %s {fsmonitor} > {gitdir}/config; "
        "sleep 5"
    )


def planted_below_placeholder_ran(workspace: Path, marker: Path) -> bool:
    """The host's git in the repository the command made (if it made it before the stop)."""
    repository = workspace / _BELOW
    if (repository / ".git" / "config").exists():
        subprocess.run(["git", "status"], cwd=repository, capture_output=True, check=False)
    return marker.exists()
