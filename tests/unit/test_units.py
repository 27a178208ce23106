"""Size and duration parsing: examples from the CLI contract, and properties over all input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Success

from mechasandbox.domain.units import (
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * MIB),
        ("2g", 2 * GIB),
        ("1.5GiB", 1536 * MIB),
        ("1048576", 1048576),
        (1048576, 1048576),
        ("10k", 10 * KIB),
        ("1t", TIB),
        ("1 KiB", KIB),
        ("1kb", KIB),
        ("1K", KIB),
        ("3MB", 3 * MIB),
        (" 7 g ", 7 * GIB),
        ("100b", 100),
        (".5k", 512),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == Success(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0", "greater than zero"),
        (0, "greater than zero"),
        ("-1", "positive"),
        (-5, "positive"),
        ("nan", "invalid size 'nan'"),
        ("inf", "invalid size 'inf'"),
        ("5 zettabytes", "unknown unit 'zettabytes'"),
        ("1e3", "invalid size '1e3'"),
        ("1.3", "whole number of bytes"),
        ("9999999999t", "larger than the maximum"),
        (2**64, "too large"),
        ("12 34", "invalid size"),
        ("x" * 500, "too many characters"),
    ],
)
def test_parse_size_rejects_with_quoted_text(text: str | int, fragment: str) -> None:
    result = parse_size(text)
    assert isinstance(result, Failure)
    assert fragment in result.failure()


def test_parse_size_message_says_what_is_accepted() -> None:
    message = parse_size("lots").failure()
    assert "'lots'" in message
    assert "512m" in message


def test_parse_size_refuses_booleans_and_floats() -> None:
    assert isinstance(parse_size(True), Failure)
    assert isinstance(parse_size(1.5), Failure)  # type: ignore[arg-type]


def test_parse_size_accepts_the_largest_value() -> None:
    assert parse_size(str(MAX_SIZE)) == Success(MAX_SIZE)
    assert isinstance(parse_size(str(MAX_SIZE + 1)), Failure)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30.0),
        (30, 30.0),
        ("1.5", 1.5),
        (1.5, 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("10s", 10.0),
        ("10 S", 10.0),
        ("0.25h", 900.0),
    ],
)
def test_parse_duration_accepts(text: str | float, expected: float) -> None:
    assert parse_duration(text) == Success(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("0", "greater than zero"),
        (0, "greater than zero"),
        ("0ms", "greater than zero"),
        ("-1", "positive"),
        (-1.5, "positive"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("nan", "invalid duration 'nan'"),
        ("250us", "unknown unit 'us'"),
        ("2 days", "unknown unit 'days'"),
        ("soon", "invalid duration 'soon'"),
        (1e300, "too large"),
        (True, "boolean"),
    ],
)
def test_parse_duration_rejects(text: str | float, fragment: str) -> None:
    result = parse_duration(text)
    assert isinstance(result, Failure)
    assert fragment in result.failure()
    assert "500ms" in result.failure() or fragment in ("too large",)


@pytest.mark.parametrize(
    ("size", "text"),
    [(1536, "1536"), (512 * MIB, "512m"), (2 * GIB, "2g"), (TIB, "1t"), (1536 * KIB, "1536k")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(120.0, "2m"), (7200.0, "2h"), (30.0, "30"), (0.5, "0.5"), (90.0, "90")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# Properties -------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=MAX_SIZE)
durations = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(sizes)
def test_format_then_parse_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == Success(size)


@given(sizes)
def test_any_positive_byte_count_parses_to_itself(size: int) -> None:
    assert parse_size(size) == Success(size)
    assert parse_size(str(size)) == Success(size)


@given(
    st.integers(min_value=1, max_value=2**20),
    st.sampled_from([("k", KIB), ("m", MIB), ("g", GIB), ("KiB", KIB), ("MB", MIB), ("t", TIB)]),
)
def test_size_units_scale_by_binary_multiples(number: int, unit: tuple[str, int]) -> None:
    suffix, multiple = unit
    assert parse_size(f"{number}{suffix}") == Success(number * multiple)
    assert parse_size(f"{number} {suffix.upper()}") == Success(number * multiple)


@given(durations)
def test_format_then_parse_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == Success(seconds)


@given(st.integers(min_value=1, max_value=10**6))
def test_duration_units_scale(number: int) -> None:
    assert parse_duration(f"{number}m") == Success(number * 60.0)
    assert parse_duration(f"{number}h") == Success(number * 3600.0)
    assert parse_duration(f"{number}ms") == Success(number / 1000)


@given(st.text(max_size=80))
def test_garbage_never_raises(text: str) -> None:
    size = parse_size(text)
    duration = parse_duration(text)
    for result in (size, duration):
        assert isinstance(result, Success | Failure)
    if isinstance(size, Success):
        assert size.unwrap() > 0
    if isinstance(duration, Success):
        assert duration.unwrap() > 0


@given(st.integers(max_value=0))
def test_non_positive_numbers_fail(number: int) -> None:
    assert isinstance(parse_size(number), Failure)
    assert isinstance(parse_duration(number), Failure)


@given(st.floats())
def test_any_float_duration_is_total(value: float) -> None:
    result = parse_duration(value)
    if isinstance(result, Success):
        assert math.isfinite(value)
        assert value > 0
        assert result.unwrap() == value
