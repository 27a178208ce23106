"""The workspace paths through which git would run code or read configuration on the host.

The policy's protected list names the places of the workspace's own repository (`.git/hooks`,
`.git/config`...). Git finds code and configuration in other places too, named by that
configuration or by the file system: a `core.hooksPath`, an `include.path` target, a
script named by `core.fsmonitor` or a filter driver, a linked worktree's `commondir`, a
nested repository's or submodule's own `.git`. A command that could write one of those
would have the host's next `git status` or `git commit` run what it planted. So before
each run the workspace is read (without running git, see `git_config`) and those paths,
where they lie inside the workspace, are added to the run's protected list: every backend
then covers them as it covers the others (missing ones cannot be created).

What is found:
- the repositories: the workspace's (or the one enclosing it), nested ones (a `.git`
  directory or gitfile, bare repositories) found by a bounded walk, gitfiles' targets, a
  `commondir`'s target, the submodule paths of `.gitmodules`;
- in each repository's configuration (system, global, the repository's and worktree's,
  with their includes): the include files, `core.hooksPath`, `init.templateDir`,
  `core.excludesFile`, `core.attributesFile`, and the files named by the settings whose
  value is a command git runs by itself in ordinary use (`core.fsmonitor`, `core.pager`,
  `core.editor`, `core.sshCommand`, filter, diff and merge drivers, credential helpers,
  signing programs). Aliases and tools the user invokes by name (`alias.*`, `mergetool.*`)
  are not: their scripts are the project's own, edited like the rest of its files.

Not covered: a repository the command makes during the run (`git init`, `git clone`)
cannot be known beforehand; see docs/backends.md.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping

import attrs

from mechasandbox.backends.base import HostContext
from mechasandbox.backends.git_config import (
    ConfigEntry,
    ConfigFiles,
    ParsedConfigs,
    expand_path,
    parse_config,
    read_config_files,
    read_regular,
)
from mechasandbox.backends.git_facts import GitFacts
from mechasandbox.backends.git_walk import MAX_WALK_DIRECTORIES, is_bare_repository
from mechasandbox.backends.workspace.placeholders import FileContents
from mechasandbox.domain.policy import Policy

# Repositories whose places are protected (the workspace's own and nested ones).
MAX_REPOSITORIES = 64
# Entries of a repository's git directory protected when the policy protects none of
# `.git/...` of its own (used for nested repositories when the policy's list is empty).
GITDIR_ENTRIES: tuple[str, ...] = (
    "hooks",
    "config",
    "info",
    "commondir",
    "modules",
    "config.worktree",
    "worktrees",
)
# Missing files git reads, covered by a file holding what git makes of their absence (a
# directory there breaks git, in the sandbox and on the host, while the run goes): an
# include target, a git directory's `commondir` and `config.worktree`.
EMPTY_CONFIG = b""
FILE_CONTENTS = {"commondir": b".\n", "config.worktree": EMPTY_CONFIG}

_BOOLEANS = frozenset({"", "true", "false", "yes", "no", "on", "off", "1", "0"})


def runs_command(entry: ConfigEntry) -> bool:
    """Whether git runs the entry's value as a command by itself, in ordinary use."""
    section, sub, name = entry.section, entry.subsection, entry.name
    if section == "core" and sub is None:
        if name == "fsmonitor":
            return (entry.value or "").strip().lower() not in _BOOLEANS
        return name in ("sshcommand", "editor", "pager", "askpass", "gitproxy")
    if sub is None:
        return (section, name) in {
            ("sequence", "editor"),
            ("diff", "external"),
            ("gpg", "program"),
            ("credential", "helper"),
            ("uploadpack", "packobjectshook"),
            ("interactive", "difffilter"),
        }
    return (section, name) in {
        ("pager", name),
        ("diff", "command"),
        ("diff", "textconv"),
        ("filter", "clean"),
        ("filter", "smudge"),
        ("filter", "process"),
        ("merge", "driver"),
        ("gpg", "program"),
        ("gpg", "defaultkeycommand"),
        ("credential", "helper"),
        ("remote", "uploadpack"),
        ("remote", "receivepack"),
    }


PATH_KEYS = {
    ("core", "hookspath"),
    ("init", "templatedir"),
    ("core", "excludesfile"),
    ("core", "attributesfile"),
}
_SHELL_OPERATORS = frozenset({";", "&", "&&", "|", "||", "(", ")", "<", ">", ">>", "<&", ">&"})


def command_words(command: str) -> tuple[str, ...]:
    """The words of a shell command that may name a file: shell operators dropped, the
    value of `--opt=value` and `NAME=value` words taken; words with expansions (`$`, a
    backquote, git's `%f`) left out, as nothing static names their file."""
    text = command.removeprefix("!")
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        words = text.split()
    found: list[str] = []
    for word in words:
        if word in _SHELL_OPERATORS:
            continue
        named = word.split("=", 1)[1] if "=" in word else word
        if named and not any(char in named for char in "$`%*?"):
            found.append(named)
    return tuple(found)


@attrs.frozen(kw_only=True)
class Repository:
    """A repository git may use on the host. `worktree`: where its commands and hooks run
    (the git directory itself for a bare repository); `gitfile`: the `.git` file naming
    the git directory, if any."""

    gitdir: str
    commondir: str
    worktree: str
    gitfile: str | None = None

    def config_files(self, home: str, parsed: ParsedConfigs | None = None) -> ConfigFiles:
        """Its own configuration: the common `config`, and the `config.worktree` files
        (`parsed`: see `read_config_files`)."""
        paths = (
            os.path.join(self.commondir, "config"),
            os.path.join(self.commondir, "config.worktree"),
            os.path.join(self.gitdir, "config.worktree"),
        )
        return read_config_files(tuple(dict.fromkeys(paths)), home=home, parsed=parsed)


def _gitfile_target(path: str) -> str | None:
    """The git directory a `.git` file names (`gitdir: X`, X relative to the file)."""
    text = read_regular(path, 4096)
    if text is None or not text.startswith("gitdir: "):
        return None
    target = text[len("gitdir: ") :].splitlines()[0].strip() if text[8:] else ""
    if not target:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _commondir(gitdir: str) -> str:
    text = read_regular(os.path.join(gitdir, "commondir"), 4096)
    if not text or not text.strip():
        return gitdir
    return os.path.normpath(os.path.join(gitdir, text.strip().splitlines()[0]))


def _names(path: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(path))
    except OSError:
        return frozenset()


def repository_at(top: str) -> Repository | None:
    """The repository whose working tree is `top` (a `.git` directory or file there)."""
    dotgit = os.path.join(top, ".git")
    if os.path.isdir(dotgit) and not os.path.islink(dotgit):
        return Repository(gitdir=dotgit, commondir=_commondir(dotgit), worktree=top)
    if os.path.lexists(dotgit) and not os.path.isdir(dotgit):
        target = _gitfile_target(dotgit)
        if target is None:
            return Repository(gitdir=dotgit, commondir=dotgit, worktree=top, gitfile=dotgit)
        return Repository(gitdir=target, commondir=_commondir(target), worktree=top, gitfile=dotgit)
    if os.path.islink(dotgit):  # a symlink to a directory: git follows it
        return Repository(gitdir=dotgit, commondir=_commondir(dotgit), worktree=top)
    return None


def enclosing_repository(workspace: str) -> Repository | None:
    """The repository of the workspace: its own `.git`, or (a workspace inside a
    repository's working tree) the nearest above it, whose settings may name paths of
    the workspace. A bare repository as the workspace counts too."""
    if is_bare_repository(workspace, _names(workspace)):
        return Repository(gitdir=workspace, commondir=_commondir(workspace), worktree=workspace)
    path = workspace
    while True:
        found = repository_at(path)
        if found is not None:
            return found
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def global_config_paths(home: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """The system and global configuration files the host's git reads, in its order."""
    paths: list[str] = []
    if not env.get("GIT_CONFIG_NOSYSTEM"):
        paths.append(env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig")
    if env.get("GIT_CONFIG_GLOBAL"):
        paths.append(env["GIT_CONFIG_GLOBAL"])
    elif home:
        xdg = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        paths += [os.path.join(xdg, "git", "config"), os.path.join(home, ".gitconfig")]
    return tuple(paths)


@attrs.frozen(kw_only=True)
class Indirections:
    """Paths to protect (relative to the workspace, sorted), those of them that are files
    git reads (with what covers them when missing: see `FILE_CONTENTS`), and warnings."""

    protected: tuple[str, ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()
    warnings: tuple[str, ...] = ()


class _Collector:
    def __init__(self, workspace: str, home: str, parsed: ParsedConfigs) -> None:
        self.workspace = workspace
        self.home = home
        self.parsed = parsed
        self.paths: dict[str, None] = {}
        self.files: dict[str, bytes] = {}

    def relative(self, path: str) -> str | None:
        """`path` relative to the workspace; None outside it or for the workspace itself."""
        clean = os.path.normpath(path)
        root = self.workspace.rstrip("/") + "/"
        if not clean.startswith(root):
            return None
        return clean[len(root) :]

    def add(self, path: str, *, file: bytes | None = None) -> None:
        relative = self.relative(path)
        if relative is None:
            return
        self.paths[relative] = None
        if file is not None:
            self.files[relative] = file

    def command(self, value: str, worktree: str) -> None:
        for word in command_words(value):
            path = expand_path(word, relative_to=worktree, home=self.home)
            if path is None or self.relative(path) is None:
                continue
            # A word with a slash names a path (made by the command, were it missing); a bare
            # word only when such a file is there (else it is an argument or a program).
            named = "/" in word or os.path.isfile(path) or os.path.islink(path)
            if named and (os.path.islink(path) or not os.path.isdir(path)):
                self.add(path)

    def settings(self, entries: Iterable[ConfigEntry], repository: Repository) -> None:
        bare = repository.worktree == repository.gitdir
        for entry in entries:
            if entry.value is None:
                continue
            if (entry.section, entry.name) in PATH_KEYS and entry.subsection is None:
                base = repository.gitdir if bare else repository.worktree
                path = expand_path(entry.value, relative_to=base, home=self.home)
                if path is not None:
                    self.add(path)
            elif runs_command(entry):
                self.command(entry.value, repository.worktree)

    def repository(
        self, repository: Repository, entries: tuple[str, ...], common: ConfigFiles
    ) -> None:
        for directory in dict.fromkeys((repository.gitdir, repository.commondir)):
            for name in entries:
                self.add(os.path.join(directory, name), file=FILE_CONTENTS.get(name))
        if repository.gitfile is not None:
            self.add(repository.gitfile)
        if repository.worktree != repository.gitdir:
            self.add(os.path.join(repository.worktree, ".gitmodules"))
        own = repository.config_files(self.home, self.parsed)
        worktree = _configured_worktree(own.entries, repository)
        if worktree != repository.worktree:
            repository = attrs.evolve(repository, worktree=worktree)
        for target in (*common.includes, *own.includes):
            self.add(target, file=EMPTY_CONFIG)
        self.settings((*common.entries, *own.entries), repository)


def _configured_worktree(entries: Iterable[ConfigEntry], repository: Repository) -> str:
    """`core.worktree` (relative to the git directory), the last one set; else as found."""
    worktree = repository.worktree
    for entry in entries:
        if entry.key == "core.worktree" and entry.value:
            worktree = os.path.normpath(os.path.join(repository.gitdir, entry.value))
    return worktree


def _submodule_paths(worktree: str) -> tuple[str, ...]:
    """`submodule.<name>.path` of the working tree's `.gitmodules`: where a submodule's
    `.git` appears once it is checked out."""
    text = read_regular(os.path.join(worktree, ".gitmodules"), 1 << 20)
    if text is None:
        return ()
    paths = (
        os.path.normpath(os.path.join(worktree, entry.value))
        for entry in parse_config(text)
        if entry.section == "submodule" and entry.name == "path" and entry.value
    )
    # A `.gitmodules` is the repository's content: `path = .` must not pin `.git` whole.
    return tuple(path for path in paths if path.startswith(worktree.rstrip("/") + "/"))


def find_indirections(
    workspace: str,
    *,
    gitdir_entries: tuple[str, ...] = GITDIR_ENTRIES,
    home: str,
    env: Mapping[str, str],
    max_directories: int = MAX_WALK_DIRECTORIES,
    facts: GitFacts | None = None,
) -> Indirections:
    """What to protect in `workspace` (a real path) besides the policy's own entries.

    `gitdir_entries`: the entries of every git directory to protect (those the policy
    protects in `.git/`), applied to the other repositories found. `facts`: what earlier
    searches read, reused where unchanged (None: everything read now)."""
    git = facts if facts is not None else GitFacts()
    collector = _Collector(workspace, home, git.configs)
    common = read_config_files(global_config_paths(home, env), home=home, parsed=git.configs)
    repositories: list[Repository] = []
    own = enclosing_repository(workspace)
    if own is not None:
        repositories.append(own)
    walk = git.walker.walk(workspace, max_directories=max_directories)
    for top in walk.worktrees:
        found = repository_at(top)
        if found is not None:
            repositories.append(found)
    repositories += [
        Repository(gitdir=path, commondir=_commondir(path), worktree=path) for path in walk.bare
    ]
    for repository in (r for r in repositories if r.worktree != r.gitdir):
        for submodule in _submodule_paths(repository.worktree):
            collector.add(os.path.join(submodule, ".git"))
    warnings: list[str] = []
    if walk.truncated:
        warnings.append(
            f"git: the search for nested repositories stopped after {max_directories} "
            "directories; repositories further down are not protected"
        )
    if len(repositories) > MAX_REPOSITORIES:
        warnings.append(
            f"git: {len(repositories)} repositories in the workspace; only the first "
            f"{MAX_REPOSITORIES} are protected"
        )
    for repository in repositories[:MAX_REPOSITORIES]:
        collector.repository(repository, gitdir_entries, common)
    return Indirections(
        protected=tuple(sorted(collector.paths)),
        files=tuple(sorted(collector.files.items())),
        warnings=tuple(warnings),
    )


def gitdir_entries(policy: Policy) -> tuple[str, ...]:
    """The entries of `.git` the policy protects, which the other repositories get too."""
    return tuple(
        entry[len(".git/") :] for entry in policy.filesystem.protected if entry.startswith(".git/")
    )


def with_git_indirections(
    policy: Policy,
    workspace: str,
    *,
    home: str | None = None,
    env: Mapping[str, str] | None = None,
    facts: GitFacts | None = None,
) -> tuple[Policy, tuple[str, ...], FileContents]:
    """`policy` with the workspace's git indirections added to its protected paths, the
    warnings of the search, and the protected paths whose placeholder is a file (with its
    content: see `FILE_CONTENTS`), which the run carries to what makes and removes its
    placeholders. Only when the policy protects `.git/config`: a policy that lets the
    command write the repository's configuration protects nothing by protecting what that
    configuration names. `facts`: see `find_indirections`."""
    fs = policy.filesystem
    if ".git/config" not in fs.protected:
        return policy, (), ()
    environment = os.environ if env is None else env
    found = find_indirections(
        workspace,
        gitdir_entries=gitdir_entries(policy),
        home=home if home is not None else environment.get("HOME", ""),
        env=environment,
        facts=facts,
    )
    files = tuple((os.path.join(workspace, path), content) for path, content in found.files)
    covered = set(fs.protected)
    kept: list[str] = []
    for entry in found.protected:  # sorted: an entry comes before the ones below it
        parts = entry.split("/")
        if not any("/".join(parts[:depth]) in covered for depth in range(1, len(parts) + 1)):
            kept.append(entry)
            covered.add(entry)
    if not kept:
        return policy, found.warnings, files
    protected = (*fs.protected, *kept)
    evolved = attrs.evolve(policy, filesystem=attrs.evolve(fs, protected=protected))
    return evolved, found.warnings, files


def planned_policy(
    policy: Policy, workspace: str, host: HostContext, facts: GitFacts | None
) -> tuple[Policy, FileContents]:
    """What `plan` shows: the policy a run in `workspace` would compile, now, and its file
    placeholders (see `with_git_indirections`; the run reads the workspace again when it
    starts)."""
    planned, _warnings, files = with_git_indirections(
        policy, workspace, home=host.home, env=dict(host.env), facts=facts
    )
    return planned, files


def gitdir_protected(policy: Policy, workspace: str, gitdir: str) -> bool:
    """Whether the policy protects the configuration of the git directory `gitdir`."""
    config = os.path.relpath(os.path.join(gitdir, "config"), workspace).split("/")
    covered = set(policy.filesystem.protected)
    return any("/".join(config[:depth]) in covered for depth in range(1, len(config) + 1))
