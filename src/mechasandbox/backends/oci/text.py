"""What the engine can carry: text, not bytes.

The engine CLI hands the command line and the workspace path to the engine as JSON
strings, and both docker and podman turn bytes that are not UTF-8 into U+FFFD on the way:
`printf '%s' $'\\xff'` printed `\\xef\\xbf\\xbd`, and an argument naming a file with such a
name named another. Python holds such bytes (from `sys.argv`, `os.listdir`) as lone
surrogates (`surrogateescape`); a run with one is refused (`config_invalid`, naming the
argument) rather than changed. The environment is checked where its env file is made
(`env_file`).
"""

from __future__ import annotations

from collections.abc import Sequence

from returns.result import Failure, Result, Success

from mechasandbox.domain.errors import ConfigInvalid

_NOT_UTF8 = (
    "is not valid UTF-8 (here as {shown}); the container engine would replace the bytes "
    "it cannot encode with U+FFFD, so the command would get other bytes than given"
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """The text as its bytes, escaped where they are not UTF-8."""
    return repr(text.encode("utf-8", "surrogateescape"))


def check_text(argv: Sequence[str], workspace: str) -> Result[None, ConfigInvalid]:
    """Refuse an argument or a workspace path the engine would not pass on exactly."""
    for index, argument in enumerate(argv):
        if not _encodable(argument):
            problem = f"argument {index} " + _NOT_UTF8.format(shown=_shown(argument))
            return Failure(ConfigInvalid(problem=problem, field="argv"))
    if not _encodable(workspace):
        problem = "the workspace path " + _NOT_UTF8.format(shown=_shown(workspace))
        return Failure(ConfigInvalid(problem=problem, field="workspace"))
    return Success(None)
