"""The documentation agrees with the README where both say the same thing."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def table_rows(text: str) -> list[str]:
    """The rows of the first Markdown table after the configuration heading's marker or title."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| key | cachekit needs"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_the_configuration_table_is_the_same_in_the_readme_and_the_docs() -> None:
    readme = table_rows((ROOT / "README.md").read_text())
    docs = table_rows((ROOT / "docs" / "configuration.md").read_text())
    assert len(readme) > 20
    assert docs == readme
