"""No settings key is accepted and ignored: each has a row in SETTINGS_DOCS naming the test that shows
what it does, that test exists, and docs/sidecar.md carries the table generated from the rows."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar import hardening, settings
from sidecar.settings_docs import SETTINGS_DOCS, render_markdown
from tests.support.servers import ROOT


def accepted_keys() -> set[str]:
    """Every key sidecar/settings.py accepts, as a YAML path."""
    sections = {
        "sidecar.": settings.SIDECAR_KEYS,
        "sidecar.anonymous.": settings.ANONYMOUS_KEYS,
        "sidecar.trusted_headers.": settings.TRUSTED_KEYS,
        "sidecar.hardening.": settings.HARDENING_KEYS,
        "sidecar.api_keys[].": settings.API_KEY_KEYS,
        "sidecar.routes[].": settings.ROUTE_KEYS,
        "logging.": settings.LOGGING_KEYS,
        "opa.": settings.OPA_KEYS,
        "<upstream>.": settings.UPSTREAM_KEYS,
    }
    return {prefix + key for prefix, keys in sections.items() for key in keys}


def test_every_accepted_key_has_exactly_one_row() -> None:
    rows = [row.key for row in SETTINGS_DOCS]
    assert len(rows) == len(set(rows)), "a key has two rows"
    assert set(rows) - accepted_keys() == set(), "rows for keys the settings do not accept"
    assert accepted_keys() - set(rows) == set(), "accepted keys without a row in sidecar/settings_docs.py"


def test_every_row_names_a_test_that_exists() -> None:
    for row in SETTINGS_DOCS:
        if not row.proof:
            # Only free-text notes have nothing to show.
            assert row.key.endswith(".description"), f"{row.key} names no test"
            continue
        file, _, name = row.proof.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{row.key}: {file} does not exist"
        assert re.search(rf"^(async )?def {re.escape(name)}\(", path.read_text(), re.MULTILINE), (
            f"{row.key}: no test {name} in {file}"
        )


def test_every_variable_in_the_table_is_read_by_the_settings() -> None:
    source = Path(settings.__file__).read_text() + Path(hardening.__file__).read_text()
    for row in SETTINGS_DOCS:
        if row.env:
            assert f'"{row.env}"' in source, f"{row.env} is documented but never read"


def test_the_docs_carry_the_generated_table() -> None:
    docs = (ROOT / "docs" / "sidecar.md").read_text()
    assert render_markdown() in docs, "regenerate it: python -m sidecar.settings_docs"
