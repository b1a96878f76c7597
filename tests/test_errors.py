"""The error catalogue: every code is used somewhere, every message names its subject, codes are unique."""

from __future__ import annotations

import re
from pathlib import Path

from lorafit.errors import ERRORS, WARNINGS, LorafitError

SRC = Path(__file__).resolve().parents[1] / "src" / "lorafit"


def test_every_code_is_used():
    text = "".join(p.read_text() for p in SRC.glob("*.py") if p.name != "errors.py")
    unused = [c for c in [*ERRORS, *WARNINGS] if f'"{c}"' not in text]
    assert not unused, f"catalogued but never raised: {unused}"


def test_every_message_names_its_subject():
    for code, template in {**ERRORS, **WARNINGS}.items():
        fields = re.findall(r"\{(\w+)", template)
        assert fields or code in ("E009", "E307"), f"{code} names nothing: {template}"


def test_message_is_one_line_with_code():
    err = LorafitError("E109", value="weather", where="'test.csv'", row=2, labels=["a", "b"])
    assert str(err).startswith("[E109] ") and "\n" not in str(err)
    assert "'weather'" in str(err) and "row 2" in str(err)
