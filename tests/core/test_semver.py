"""One semver rule: ``core.registry.semver_numbers``. The registry's ``parse_semver`` (orchestration
versions: exactly ``MAJOR.MINOR.PATCH``), ``parse_engine_version`` and the providers'
``parse_semver`` (engine pins and capability filters: a ``-pre`` / ``+build`` tail is ignored)
all read versions through it, so they agree on every input they share."""

from __future__ import annotations

import pytest

from duroxide_sim.core.registry import parse_engine_version, parse_semver, semver_numbers
from duroxide_sim.errors import ConfigurationError, InvalidInputError
from duroxide_sim.providers._shared import parse_semver as provider_parse_semver

BIG = "9" * 18  # the most digits a number may have (the providers' version columns are 64-bit)

#: (text, exact MAJOR.MINOR.PATCH reading, reading with a -pre / +build tail cut off); None: refused.
CASES = [
    ("1.2.3", (1, 2, 3), (1, 2, 3)),
    ("0.0.0", (0, 0, 0), (0, 0, 0)),
    ("10.20.30", (10, 20, 30), (10, 20, 30)),
    (f"{BIG}.{BIG}.{BIG}", (int(BIG),) * 3, (int(BIG),) * 3),
    ("9" * 19 + ".0.0", None, None),  # too many digits
    ("01.2.3", None, None),  # leading zeros
    ("1.02.3", None, None),
    ("1.2.03", None, None),
    ("00.0.0", None, None),
    ("1.2", None, None),
    ("1", None, None),
    ("1.2.3.4", None, None),
    ("1..3", None, None),
    ("", None, None),
    (".", None, None),
    (" 1.2.3", None, None),  # whitespace is not trimmed
    ("1.2.3 ", None, None),
    ("1.2.3\n", None, None),
    ("1 .2.3", None, None),
    ("\uff11.2.3", None, None),  # fullwidth digit one
    ("\u0661.2.3", None, None),  # Arabic-Indic digit one
    ("\u00b2.2.3", None, None),  # superscript two (str.isdigit() says yes)
    ("1.2.3-pre", None, (1, 2, 3)),
    ("1.2.3+build", None, (1, 2, 3)),
    ("1.2.3-pre+build.5", None, (1, 2, 3)),
    ("1.2.3+b-x", None, (1, 2, 3)),
    ("1.2.3-", None, (1, 2, 3)),
    ("1.2-3", None, None),
    ("-1.2.3", None, None),
    ("+1.2.3", None, None),
    ("v1.2.3", None, None),
    ("1e3.0.0", None, None),
    ("1_0.0.0", None, None),
    ("1.2.x", None, None),
]


@pytest.mark.parametrize("text, exact, tailed", CASES, ids=[repr(c[0]) for c in CASES])
def test_every_parser_reads_a_version_by_the_same_rule(text: str, exact, tailed) -> None:
    assert semver_numbers(text) == exact
    assert semver_numbers(text, suffix=True) == tailed
    if exact is None:
        with pytest.raises(ConfigurationError, match="not semver 'major.minor.patch'"):
            parse_semver(text)
    else:
        assert parse_semver(text) == exact
    if tailed is None:
        with pytest.raises(ConfigurationError):
            parse_engine_version(text)
        with pytest.raises(InvalidInputError, match="pin must be a semver 'major.minor.patch'"):
            provider_parse_semver(text, "pin")
    else:
        assert parse_engine_version(text) == tailed
        assert provider_parse_semver(text, "pin") == tailed
        assert provider_parse_semver(text, "pin") == tailed  # (memoized: the same answer again)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"1.2.3", ["1.2.3"]])
def test_a_version_that_is_not_a_string_is_refused(value) -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse_semver(value)
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse_engine_version(value)
    with pytest.raises(InvalidInputError, match="filter minimum must be a semver"):
        provider_parse_semver(value, "filter minimum")
