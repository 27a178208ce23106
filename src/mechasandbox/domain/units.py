"""Sizes and durations as people write them (`512m`, `1.5GiB`, `500ms`, `2m`).

One parser serves config files, the CLI and the API, so `--memory 2g` and
`memory = "2g"` can never disagree. The parsers are pure and total: every input, however
malformed, yields a `Result`; a `Failure` carries a message that quotes the bad text and says
what is accepted, because it is shown to a person who mistyped a flag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation, localcontext

from returns.result import Failure, Result, Success

# Binary multiples throughout: `1k` is 1024 bytes. A sandbox limit written `512m` by a
# developer means "512 MiB" far more often than 512 000 000 bytes, and mixing the two
# conventions between flags would be worse than either.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

_DURATION_UNITS: dict[str, Decimal] = {
    "": Decimal(1),
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}

MAX_SIZE = 2**63 - 1  # the largest value an rlimit or a cgroup file accepts
MAX_DURATION_S = 1e12  # far beyond any limit; keeps float arithmetic exact enough

_SIZE_HELP = (
    "expected a positive number of bytes, optionally with a binary unit: "
    "k, m, g, t (also kb/KiB, ...), e.g. 512m, 2g, 1.5GiB, 1048576"
)
_DURATION_HELP = (
    "expected a positive number of seconds, optionally with a unit: ms, s, m, h, "
    "e.g. 30, 1.5, 500ms, 2m, 1h"
)

# A plain decimal number (no exponent, no sign: signs are rejected with a clearer message)
# followed by an optional unit made of letters. Whitespace between them is allowed.
_QUANTITY = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[a-zA-Z]*)\s*")
_MAX_TEXT = 64  # longer input is garbage; refuse before any regex work
_MAX_NUMBER = 2**63  # numbers past this are refused before being spelled out as text


def _quote(text: str) -> str:
    shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."
    return repr(shown)


def _split(text: str, kind: str, help_text: str) -> Result[tuple[Decimal, str], str]:
    """Split `text` into a non-negative decimal and a lower-cased unit, or explain why not."""
    if len(text) > _MAX_TEXT:
        return Failure(f"invalid {kind} {_quote(text)}: too many characters; {help_text}")
    if not text.strip():
        return Failure(f"invalid {kind} {_quote(text)}: empty; {help_text}")
    if text.strip().startswith("-"):
        return Failure(f"invalid {kind} {_quote(text)}: must be positive; {help_text}")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return Failure(f"invalid {kind} {_quote(text)}; {help_text}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return Failure(f"invalid {kind} {_quote(text)}; {help_text}")
    return Success((number, match["unit"].lower()))


def _number_text(value: int | float, kind: str, help_text: str) -> Result[str, str]:
    """Numbers given as numbers (TOML `memory = 1048576`) go through the same text path."""
    if isinstance(value, bool):
        return Failure(f"invalid {kind} {value!r}: a boolean is not a {kind}; {help_text}")
    if isinstance(value, float) and not math.isfinite(value):
        return Failure(f"invalid {kind} {value!r}: must be finite; {help_text}")
    if value < 0:
        return Failure(f"invalid {kind} {value!r}: must be positive; {help_text}")
    if value > _MAX_NUMBER:
        return Failure(f"invalid {kind} {value!r}: too large")
    if isinstance(value, int):
        return Success(str(value))
    return Success(format(Decimal(repr(value)), "f"))


def _amount(
    value: object, kind: str, units: Mapping[str, int | Decimal], help_text: str
) -> Result[tuple[str, Decimal], str]:
    """`value` (text, or a number read as text) times its unit, with the text it was read
    from (for the messages of the checks that follow)."""
    if isinstance(value, int | float):
        as_text = _number_text(value, kind, help_text)
        if isinstance(as_text, Failure):
            return as_text
        value = as_text.unwrap()
    if not isinstance(value, str):
        return Failure(f"invalid {kind} {value!r}: not a number or text; {help_text}")
    text = value

    def scaled(split: tuple[Decimal, str]) -> Result[tuple[str, Decimal], str]:
        number, unit = split
        multiple = units.get(unit)
        if multiple is None:
            return Failure(f"invalid {kind} {_quote(text)}: unknown unit {unit!r}; {help_text}")
        with localcontext(prec=2 * _MAX_TEXT):  # exact: the input has at most _MAX_TEXT digits
            return Success((text, number * multiple))

    return _split(text, kind, help_text).bind(scaled)


def parse_size(text: str | int) -> Result[int, str]:
    """Bytes in `text`: `512m`, `2g`, `1.5GiB`, `1048576` (bytes when there is no unit).

    Fractions are allowed when they land on a whole byte count (`1.5k` is 1536); zero is
    refused because every size here is a limit, and a zero limit is always a mistake.
    """
    # Typed for callers, checked for everyone: TOML and JSON hand over whatever was written.
    value: object = text
    if isinstance(value, float):
        return Failure(
            f"invalid size {value!r}: write a whole number of bytes, or a string with a "
            f"unit such as '1.5g'; {_SIZE_HELP}"
        )
    return _amount(value, "size", _SIZE_UNITS, _SIZE_HELP).bind(_checked_size)


def _checked_size(amount: tuple[str, Decimal]) -> Result[int, str]:
    text, total = amount
    if total != total.to_integral_value():
        return Failure(f"invalid size {_quote(text)}: not a whole number of bytes; {_SIZE_HELP}")
    if total <= 0:
        return Failure(f"invalid size {_quote(text)}: must be greater than zero; {_SIZE_HELP}")
    if total > MAX_SIZE:
        return Failure(
            f"invalid size {_quote(text)}: larger than the maximum {format_size(MAX_SIZE)}"
        )
    return Success(int(total))


def format_size(size: int) -> str:
    """The shortest exact spelling of `size` that `parse_size` reads back: `512m`, `1536k`."""
    for unit in ("t", "g", "m", "k"):
        multiple = _SIZE_UNITS[unit]
        if size != 0 and size % multiple == 0:
            return f"{size // multiple}{unit}"
    return str(size)


def parse_duration(text: str | int | float) -> Result[float, str]:
    """Seconds in `text`: `30`, `1.5`, `500ms`, `2m`, `1h` (seconds when there is no unit).

    Zero is refused: a zero timeout would kill every command before it starts.
    """
    return _amount(text, "duration", _DURATION_UNITS, _DURATION_HELP).bind(_checked_duration)


def _checked_duration(amount: tuple[str, Decimal]) -> Result[float, str]:
    text, seconds = amount
    if seconds <= 0:
        return Failure(
            f"invalid duration {_quote(text)}: must be greater than zero; {_DURATION_HELP}"
        )
    if seconds > Decimal(MAX_DURATION_S):
        return Failure(f"invalid duration {_quote(text)}: too long; {_DURATION_HELP}")
    return Success(float(seconds))


def format_duration(seconds: float) -> str:
    """A spelling of `seconds` that `parse_duration` reads back exactly: `2m`, `1.5`, `500ms`."""
    for unit, multiple in (("h", 3600), ("m", 60)):
        if seconds >= multiple and seconds % multiple == 0:
            return f"{int(seconds // multiple)}{unit}"
    if seconds == int(seconds):
        return str(int(seconds))
    return format(Decimal(repr(seconds)), "f")
