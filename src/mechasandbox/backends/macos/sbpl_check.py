"""A structural check of generated SBPL profiles and `sandbox-exec` command lines (pure).

The compiler in `sbpl` is the only producer of profiles; this module is an independent
reader that says what is wrong with one, so tests can hold every generated profile (golden
cases and property-generated policies alike) to the same rules:

- the text parses: balanced parentheses, terminated strings, nothing after a stray `)`;
- `(version 1)` first, then `(deny default)` before any `allow`;
- every rule is `(allow|deny OPERATION... FILTER...)` with operations and filters from a
  fixed allowlist (what the compiler uses; anything else is a change to review);
- no network operation is allowed when the policy's network mode is `none`, but connecting
  to a named unix socket (`(remote unix-socket (path-literal (param ...)))`), and no TLS
  or DNS mach service either; loopback is only ever `localhost:PORT`, never `localhost:*`;
- sysctls are written only by name, from `platform.SYSCTL_WRITE_NAMES`;
- every `deny_write` and protected path is denied as a literal and as a subpath (creating a
  missing one is a write too), and git's and husky's places are denied at any depth of the
  workspace by the path-free regexes of `platform`;
- no path of the policy appears in the text: every path filter takes either
  `(param "NAME")` or one of the compiler's fixed system paths, every referenced parameter
  is defined, and every defined parameter is used;
- `sandbox-exec` is run by its absolute path, with the profile inline and the parameters
  before `--`.

It checks shape, not meaning: whether a profile confines is for the macOS workflow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from mechasandbox.backends.macos import platform, sbpl

SANDBOX_EXEC = "/usr/bin/sandbox-exec"

# Operations the compiler writes. `default` only in `(deny default)`.
OPERATIONS: frozenset[str] = frozenset(
    {
        "default",
        "process-exec",
        "process-fork",
        "process-info*",
        "signal",
        "sysctl-read",
        "sysctl-write",
        "mach-lookup",
        "user-preference-read",
        "ipc-posix-sem",
        "ipc-posix-shm-read-data",
        "ipc-posix-shm-read-metadata",
        "ipc-posix-shm-write-create",
        "ipc-posix-shm-write-data",
        "ipc-posix-shm-write-unlink",
        "pseudo-tty",
        "file-read*",
        "file-read-metadata",
        "file-write*",
        "file-write-data",
        "file-write-unlink",
        "file-ioctl",
        "file-map-executable",
        "network*",
        "network-outbound",
        "network-inbound",
        "network-bind",
        "system-socket",
    }
)
NETWORK_OPERATIONS: frozenset[str] = frozenset(
    {"network*", "network-outbound", "network-inbound", "network-bind", "system-socket"}
)
# Filters and their argument shape: "string", "symbol", "filters" (nested), "param".
FILTERS: dict[str, str] = {
    "literal": "path",
    "subpath": "path",
    "regex": "regex",
    "sysctl-name": "string",
    "sysctl-name-prefix": "string",
    "global-name": "string",
    "local-name": "string",
    "ipc-posix-name": "string",
    "ipc-posix-name-prefix": "string",
    "ipc-posix-name-regex": "regex",
    "extension": "string",
    "target": "symbol",
    "socket-domain": "domain",
    "remote": "remote",
    "local": "remote",
    "require-all": "filters",
    "require-any": "filters",
}
TARGETS: frozenset[str] = frozenset({"same-sandbox"})
SOCKET_DOMAINS: frozenset[str] = frozenset({"AF_UNIX"})
# The regexes the compiler writes: the command's own pseudo-terminals and shared memory,
# git's and husky's places (all path-free).
REGEXES: frozenset[str] = frozenset(
    {
        platform.TTY_REGEX,
        platform.SHM_OWN_REGEX,
        *platform.PROTECTED_NAME_REGEXES,
        platform.KEEP_NAME_REGEX,
    }
)
FIXED_PATHS: frozenset[str] = frozenset(
    (
        *platform.SYSTEM_READ_SUBPATHS,
        *platform.SYSTEM_READ_LITERALS,
        *platform.SYSTEM_METADATA_LITERALS,
        platform.DTRACE_HELPER,
        "/dev/ptmx",
        "/dev/fd",
        platform.MDNS_RESPONDER_SOCKET,
    )
)
# Mach services that reach the network's configuration or fetch on their own.
NETWORK_SERVICES: frozenset[str] = frozenset(
    (*platform.MACH_SERVICES_TLS, *platform.MACH_SERVICES_DNS)
)
_REMOTE = re.compile(r"^localhost:[0-9]{1,5}$")
_ANY_ADDRESS = "*:*"  # full network only
_PARAM_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


@attrs.frozen
class Atom:
    """A symbol (`allow`, `file-read*`), a string (`"..."`) or a regex (`#"..."`)."""

    kind: str  # "symbol" | "string" | "regex"
    value: str


Form = Atom | list["Form"]


class ParseError(ValueError):
    pass


def _string(text: str, start: int) -> tuple[str, int]:
    """The string whose opening quote is at `start`, and the index after its closing quote."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        if char == "\n":
            raise ParseError(f"line break inside a string at offset {start}")
        out.append(char)
        i += 1
    raise ParseError(f"unterminated string at offset {start}")


def _regex(text: str, start: int) -> tuple[str, int]:
    """A regex literal `#"..."` whose opening quote is at `start`: raw (its backslashes
    reach the regex engine), ended by the first quote no backslash escapes."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return text[start + 1 : i], i + 1
        elif text[i] == "\n":
            raise ParseError(f"line break inside a regex at offset {start}")
        else:
            i += 1
    raise ParseError(f"unterminated regex at offset {start}")


def tokenize(text: str) -> list[str | Atom]:
    """Parentheses as "(" and ")", everything else as atoms; comments dropped."""
    tokens: list[str | Atom] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\n\r":
            i += 1
        elif char == ";":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char in "()":
            tokens.append(char)
            i += 1
        elif char == '"':
            value, i = _string(text, i)
            tokens.append(Atom("string", value))
        elif text.startswith('#"', i):
            value, i = _regex(text, i + 1)
            tokens.append(Atom("regex", value))
        else:
            match = re.compile(r"[^\s()\";]+").match(text, i)
            if match is None:  # pragma: no cover - the class above matches any other char
                raise ParseError(f"unexpected {char!r} at offset {i}")
            tokens.append(Atom("symbol", match.group()))
            i = match.end()
    return tokens


def parse(text: str) -> list[Form]:
    """The top-level forms of `text`, or ParseError (unbalanced, stray atoms)."""
    stack: list[list[Form]] = [[]]
    for item in tokenize(text):
        if item == "(":
            stack.append([])
        elif item == ")":
            if len(stack) == 1:
                raise ParseError("unbalanced: ')' without '('")
            done = stack.pop()
            stack[-1].append(done)
        else:
            assert isinstance(item, Atom)
            if len(stack) == 1:
                raise ParseError(f"atom {item.value!r} outside any form")
            stack[-1].append(item)
    if len(stack) != 1:
        raise ParseError(f"unbalanced: {len(stack) - 1} unclosed '('")
    return stack[0]


@attrs.define(kw_only=True)
class _Walk:
    problems: list[str]
    params_used: set[str]
    defined: frozenset[str]
    seen_default: bool = False
    # (filter, parameter) of every `deny file-write*` filter naming a parameter directly.
    denied_writes: set[tuple[str, str]] = attrs.field(factory=set)
    # The regexes denied for writing (or unlinking) within the workspace.
    workspace_regexes: set[str] = attrs.field(factory=set)


def _symbol(form: Form) -> str | None:
    return form.value if isinstance(form, Atom) and form.kind == "symbol" else None


def _param_ref(form: Form, walk: _Walk, where: str) -> bool:
    """True when `form` is `(param "NAME")` (recording the name); reports bad names."""
    if not (isinstance(form, list) and form and _symbol(form[0]) == "param"):
        return False
    if len(form) != 2 or not isinstance(form[1], Atom) or form[1].kind != "string":
        walk.problems.append(f"{where}: malformed (param ...)")
        return True
    name = form[1].value
    if not _PARAM_NAME.match(name):
        walk.problems.append(f"{where}: bad parameter name {name!r}")
    elif name not in walk.defined:
        walk.problems.append(f"{where}: parameter {name!r} is not defined")
    walk.params_used.add(name)
    return True


def _check_argument(shape: str, arg: Form, walk: _Walk, where: str) -> None:
    """The single argument of a non-nesting filter, by the filter's shape."""
    if shape == "path":
        if _param_ref(arg, walk, where):
            return
        if not (isinstance(arg, Atom) and arg.kind == "string"):
            walk.problems.append(f"{where}: expected a path string or (param ...)")
        elif arg.value not in FIXED_PATHS:
            walk.problems.append(f"{where}: literal path {arg.value!r} is not parameterised")
    elif shape == "regex":
        if not (isinstance(arg, Atom) and arg.kind == "regex" and arg.value in REGEXES):
            walk.problems.append(f"{where}: unexpected regex {arg!r}")
    elif shape == "symbol":
        if _symbol(arg) not in TARGETS:
            walk.problems.append(f"{where}: unexpected target {arg!r}")
    elif shape == "domain":
        if _symbol(arg) not in SOCKET_DOMAINS:
            walk.problems.append(f"{where}: unexpected socket domain {arg!r}")
    elif shape == "remote":  # two atoms: a one-argument remote is malformed
        walk.problems.append(f'{where}: expected `ip "localhost:PORT"`')
    elif not (isinstance(arg, Atom) and arg.kind == "string"):
        walk.problems.append(f"{where}: expected a string")


def _check_filter(form: Form, walk: _Walk, where: str) -> None:
    if not isinstance(form, list) or not form:
        walk.problems.append(f"{where}: expected a filter, got {form!r}")
        return
    name = _symbol(form[0])
    shape = FILTERS.get(name or "")
    if name is None or shape is None:
        walk.problems.append(f"{where}: unknown filter {name or form[0]!r}")
        return
    args = form[1:]
    where = f"{where} ({name})"
    if shape == "filters":
        if not args:
            walk.problems.append(f"{where}: empty")
        for arg in args:
            _check_filter(arg, walk, where)
    elif len(args) != 1:
        walk.problems.append(f"{where}: expected one argument, got {len(args)}")
    else:
        _check_argument(shape, args[0], walk, where)


def _ip_address(atom: Form) -> bool:
    """`"localhost:PORT"` with a valid port, or `"*:*"`."""
    if not (isinstance(atom, Atom) and atom.kind == "string"):
        return False
    if atom.value == _ANY_ADDRESS:
        return True
    return _REMOTE.match(atom.value) is not None and 0 < int(atom.value.split(":")[1]) < 65536


def _unix_socket(form: list[Form], walk: _Walk, where: str) -> bool:
    """`(remote unix-socket (path-literal PATH))`, PATH a parameter or a fixed path."""
    ok = (
        len(form) == 3
        and _symbol(form[1]) == "unix-socket"
        and isinstance(form[2], list)
        and len(form[2]) == 2
        and _symbol(form[2][0]) == "path-literal"
    )
    if ok:
        assert isinstance(form[2], list)
        _check_argument("path", form[2][1], walk, where)
    return ok


def _check_remote(form: list[Form], walk: _Walk, where: str) -> bool:
    """`(remote ip "localhost:PORT" | "*:*")`, `(local ip ...)` alike, or
    `(remote unix-socket (path-literal PATH))`; True when `form` is a remote or local."""
    kind = _symbol(form[0]) if form else None
    if kind not in ("remote", "local"):
        return False
    if kind == "remote" and len(form) > 1 and _symbol(form[1]) == "unix-socket":
        if not _unix_socket(form, walk, where):
            walk.problems.append(f"{where}: only `(remote unix-socket (path-literal PATH))`")
        return True
    if not (len(form) == 3 and _symbol(form[1]) == "ip" and _ip_address(form[2])):
        walk.problems.append(f'{where}: only `({kind} ip "localhost:PORT")` or "*:*" is expected')
    return True


def _named_socket_only(form: list[Form]) -> bool:
    """An allow that only opens named unix sockets (their connect, or AF_UNIX sockets):
    what a policy naming sockets gets even with no network."""
    operations = [_symbol(f) for f in form[1:] if _symbol(f) is not None]
    filters = [f for f in form[1:] if _symbol(f) is None]
    if not filters or not all(isinstance(f, list) for f in filters):
        return False
    if operations == ["system-socket"]:
        return filters == [[Atom("symbol", "socket-domain"), Atom("symbol", "AF_UNIX")]]
    return operations == ["network-outbound"] and all(
        isinstance(f, list)
        and len(f) == 3
        and _symbol(f[0]) == "remote"
        and _symbol(f[1]) == "unix-socket"
        and isinstance(f[2], list)
        and len(f[2]) == 2
        and isinstance(f[2][1], list)
        and bool(f[2][1])
        and _symbol(f[2][1][0]) == "param"
        for f in filters
    )


def _check_with(form: list[Form], action: str | None, walk: _Walk, where: str) -> bool:
    """`(with message "TAG")` on a deny; True when `form` is a `with` modifier."""
    if not form or _symbol(form[0]) != "with":
        return False
    ok = (
        action == "deny"
        and len(form) == 3
        and _symbol(form[1]) == "message"
        and isinstance(form[2], Atom)
        and form[2].kind == "string"
        and sbpl.LOG_TAG.fullmatch(form[2].value) is not None
    )
    if not ok:
        walk.problems.append(f'{where}: only `(with message "TAG")` on a deny is expected')
    return True


def _check_operations(
    action: str, operations: list[str], walk: _Walk, where: str, *, network_none: bool
) -> None:
    if not operations:
        walk.problems.append(f"{where}: no operation")
    for op in operations:
        if op not in OPERATIONS:
            walk.problems.append(f"{where}: unknown operation {op!r}")
    if "default" in operations:
        walk.problems.append(f"{where}: `default` mixed with other operations")
    if action == "allow" and not walk.seen_default:
        walk.problems.append(f"{where}: allow before (deny default)")
    allowed_network = [op for op in operations if op in NETWORK_OPERATIONS]
    if action == "allow" and network_none and allowed_network:
        walk.problems.append(
            f"{where}: allows {', '.join(allowed_network)} although the network mode is none"
        )


def _strings(form: Form, filter_name: str) -> list[str]:
    """The string arguments of every `(filter_name "...")` anywhere inside `form`."""
    if not isinstance(form, list) or not form:
        return []
    if _symbol(form[0]) == filter_name and len(form) == 2 and isinstance(form[1], Atom):
        return [form[1].value]
    return [value for item in form[1:] for value in _strings(item, filter_name)]


def _scoped_regexes(form: Form) -> list[str]:
    """The regexes of `(require-all (subpath (param "WORKSPACE")) ... (regex ...))`."""
    if not (isinstance(form, list) and form and _symbol(form[0]) == "require-all"):
        return []
    workspace = [Atom("symbol", "param"), Atom("string", "WORKSPACE")]
    if not any(
        isinstance(item, list) and [Atom("symbol", "subpath"), workspace] in _flat(item)
        for item in form[1:]
    ):
        return []
    return _strings(form, "regex")


def _flat(form: list[Form]) -> list[Form]:
    """`form` and every list nested in it."""
    return [form, *(x for item in form if isinstance(item, list) for x in _flat(item))]


def _check_grants(
    action: str,
    operations: list[str],
    filters: list[Form],
    walk: _Walk,
    where: str,
    *,
    network_none: bool,
) -> None:
    """What a rule's operations may name: sysctl writes, network services; and what the
    deny rules cover (recorded for the checks after the walk)."""
    if action == "allow" and "sysctl-write" in operations:
        names = [n for f in filters for n in _strings(f, "sysctl-name")]
        if (
            not names
            or any(n not in platform.SYSCTL_WRITE_NAMES for n in names)
            or any(_strings(f, "sysctl-name-prefix") for f in filters)
        ):
            walk.problems.append(f"{where}: sysctl-write beyond {platform.SYSCTL_WRITE_NAMES}")
    if action == "allow" and "mach-lookup" in operations and network_none:
        reached = sorted(
            {n for f in filters for n in _strings(f, "global-name")} & NETWORK_SERVICES
        )
        if reached:
            walk.problems.append(
                f"{where}: network services {', '.join(reached)} although the mode is none"
            )
    if action != "deny":
        return
    for item in filters:
        if "file-write*" in operations or "file-write-unlink" in operations:
            walk.workspace_regexes.update(_scoped_regexes(item))
        if "file-write*" in operations and isinstance(item, list) and len(item) == 2:
            kind, arg = _symbol(item[0]), item[1]
            if kind in ("literal", "subpath") and isinstance(arg, list) and len(arg) == 2:
                name = arg[1]
                if isinstance(name, Atom) and _symbol(arg[0]) == "param":
                    walk.denied_writes.add((kind, name.value))


def _check_coverage(names: Sequence[str], walk: _Walk) -> None:
    """Every deny_write and protected path denied whole; git's places at any depth."""
    for name in names:
        if name.startswith(("DENY_WRITE_", "PROTECTED_")):
            missing = [k for k in ("literal", "subpath") if (k, name) not in walk.denied_writes]
            if missing:
                walk.problems.append(f"{name} is not denied as {' and '.join(missing)}")
    wanted = {*platform.PROTECTED_NAME_REGEXES, platform.KEEP_NAME_REGEX}
    absent = sorted(wanted - walk.workspace_regexes)
    if absent:
        walk.problems.append(f"the workspace lacks the deny of {len(absent)} protected names")


def _check_rule(form: Form, walk: _Walk, where: str, *, network_none: bool) -> None:
    """One top-level `(allow|deny OPERATION... FILTER...)` form."""
    if not isinstance(form, list) or not form:
        walk.problems.append(f"{where}: empty or bare form")
        return
    action = _symbol(form[0])
    if action not in ("allow", "deny"):
        walk.problems.append(f"{where}: unknown top-level form {action or form[0]!r}")
        return
    operations = [op for op in (_symbol(f) for f in form[1:]) if op is not None]
    if form[1 : 1 + len(operations)] != [Atom("symbol", op) for op in operations]:
        walk.problems.append(f"{where}: operations must come before filters")
    filters = [
        f
        for f in form[1:]
        if _symbol(f) is None and not (isinstance(f, list) and _check_with(f, action, walk, where))
    ]
    if operations == ["default"]:
        if action != "deny" or filters:
            walk.problems.append(f"{where}: only a bare (deny default) is expected")
        if walk.seen_default:
            walk.problems.append(f"{where}: (deny default) twice")
        walk.seen_default = True
        return
    _check_operations(
        action, operations, walk, where, network_none=network_none and not _named_socket_only(form)
    )
    _check_grants(action, operations, filters, walk, where, network_none=network_none)
    for item in filters:
        if isinstance(item, list) and _check_remote(item, walk, where):
            continue
        _check_filter(item, walk, where)


def check_profile(
    text: str, params: Sequence[tuple[str, str]], *, network_none: bool
) -> tuple[str, ...]:
    """Every structural problem of the profile `text` with its `-D` `params` (empty: fine).

    `network_none`: the policy's network mode is `none`, so no network allow may appear.
    """
    try:
        forms = parse(text)
    except ParseError as error:
        return (f"does not parse: {error}",)
    names = [name for name, _ in params]
    walk = _Walk(problems=[], params_used=set(), defined=frozenset(names))
    if len(set(names)) != len(names):
        walk.problems.append("a parameter is defined twice")
    if not forms or forms[0] != [Atom("symbol", "version"), Atom("symbol", "1")]:
        walk.problems.append("the profile does not start with (version 1)")
    for index, form in enumerate(forms[1:], start=1):
        _check_rule(form, walk, f"form {index}", network_none=network_none)
    if not walk.seen_default:
        walk.problems.append("no (deny default)")
    _check_coverage(names, walk)
    unused = sorted(set(names) - walk.params_used)
    if unused:
        walk.problems.append(f"parameters defined but never used: {', '.join(unused)}")
    # A path of the policy spelled out in the text (it can only be in a string atom).
    texts = {a.value for a in tokenize(text) if isinstance(a, Atom) and a.kind != "symbol"}
    for name, value in params:
        if value in texts and value not in FIXED_PATHS:
            walk.problems.append(f"the value of {name} appears literally in the profile")
    return tuple(walk.problems)


def check_invocation(argv: Sequence[str], params: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """Problems with a `sandbox-exec -p PROFILE -DNAME=value... -- command...` argv."""
    problems: list[str] = []
    if not argv or argv[0] != SANDBOX_EXEC:
        problems.append(f"not run by its absolute path {SANDBOX_EXEC}")
    if list(argv[1:2]) != ["-p"] or len(argv) < 3:
        problems.append("the profile is not passed inline with -p")
    if "--" not in argv:
        return (*problems, "no `--` before the command")
    options = list(argv[3 : list(argv).index("--")])
    expected = [f"-D{name}={value}" for name, value in params]
    if options != expected:
        problems.append("the options between the profile and `--` are not exactly the -D params")
    if list(argv).index("--") == len(argv) - 1:
        problems.append("no command after `--`")
    return tuple(problems)
