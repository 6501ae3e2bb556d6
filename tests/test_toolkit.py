"""kvs.http.toolkit's pure helpers, tested directly."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from kvs.http.toolkit import has_long_digit_run

# What json_body searched for before: a run of 20 digits (a bytes pattern's \d is ASCII only).
REGEX = re.compile(rb"\d{20}")


def test_long_digit_run_needs_twenty_ascii_digits_in_a_row() -> None:
    assert has_long_digit_run(b'{"flags": 18446744073709551616}')  # 2**64, 20 digits
    assert has_long_digit_run(b"1" * 20)
    assert not has_long_digit_run(b'{"flags": 1844674407370955161}')  # 19 digits
    assert not has_long_digit_run(b"1234567890 1234567890")  # split by a space
    assert not has_long_digit_run("١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠".encode())  # non-ASCII digits
    assert not has_long_digit_run(b"")


@given(st.binary(max_size=80) | st.text(alphabet="0123456789 .e-x", max_size=60).map(str.encode))
def test_long_digit_run_agrees_with_the_regex(raw: bytes) -> None:
    assert has_long_digit_run(raw) == (REGEX.search(raw) is not None)
