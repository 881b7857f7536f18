"""Draw the benchmark tables as one SVG chart: throughput bars, lost updates beside them.

Reads the JSON files the benchmark scripts write with ``--json`` and writes a
plain SVG (no plotting library needed):

    python bench/chart.py bench/results/lmdb.json bench/results/filesystem.json \\
        bench/results/redis.json --out docs/benchmark.svg
"""

from __future__ import annotations

import argparse
import json
import re
from html import escape
from typing import Any

WIDTH = 900
LABEL = 275  # width of the contender names
BAR = 380  # longest bar
ROW = 26
GAP = 34


def colour(row: dict[str, Any]) -> str:
    if row["lost"]:
        return "#d9534f"  # loses updates
    if row["contender"].startswith("cachekit"):
        return "#2e8b57"
    return "#9aa5b1"


# An absolute path as a word of a title (``/a/b``, ``~/a``, ``C:\a``), with what joins it to the
# title (", ", " on ", ...). One segment (``/hits``) is a URL more likely than a machine's path;
# a slash inside a word (``ops/s``, ``get/set``) is no path at all.
ABSOLUTE_PATH = re.compile(
    r"(?:,\s*|\s+(?:on|in|at|under)\s+|\s+)?"
    r"(?<![^\s,(])(?:(?:/[^\s,;()/]+){2,}/?|~[/\\][^\s,;()]*|[A-Za-z]:[/\\][^\s,;()]*)"
)


def without_paths(title: str) -> str:
    """A title with any absolute path taken out (results of older runs carried one).

    >>> without_paths("shared counter, /work/main")
    'shared counter'
    >>> without_paths("shared counter on FileSystemCache, /work/main")
    'shared counter on FileSystemCache'
    >>> without_paths("counter on /home/me/src/cachekit/, 4 processes")
    'counter, 4 processes'
    >>> without_paths("counter (/tmp/cachekit-bench-x1y2)")
    'counter'
    >>> without_paths("dict read-modify-write, on ext4")
    'dict read-modify-write, on ext4'
    >>> without_paths("throughput (ops/s): get/set beside POST /hits")
    'throughput (ops/s): get/set beside POST /hits'
    """
    bare = re.sub(r"\(\s*\)", "", ABSOLUTE_PATH.sub("", title))  # "(/a/b)" leaves "()"
    return re.sub(r"\s{2,}", " ", bare).strip(" ,;:")


def draw(tables: list[dict[str, Any]]) -> str:
    height = 60 + sum(GAP + ROW * len(table["rows"]) for table in tables)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"'
        f' font-family="sans-serif" font-size="13">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        '<text x="10" y="24" font-size="16" font-weight="bold">Shared state under 4 processes'
        " (reads: one): throughput (ops/s) and lost updates</text>",
        '<text x="10" y="44" fill="#555">green: cachekit; red: loses updates; grey: exact'
        " baselines. Medians of interleaved rounds. Each section has its own scale.</text>",
    ]
    y = 60
    for table in tables:
        y += GAP - 10
        title = escape(without_paths(table["title"]))
        out.append(
            f'<text x="10" y="{y}"><tspan font-weight="bold">{title}</tspan>'
            '<tspan fill="#555"> (bars scaled to this section\'s largest)</tspan></text>'
        )
        y += 10
        top = max(row["median_ops"] for row in table["rows"])
        for row in table["rows"]:
            length = max(2, round(BAR * row["median_ops"] / top))
            lost = f"lost {row['lost']:,} of {row['total']:,}" if row["lost"] else "none lost"
            if row["lost"] is None:
                lost = "reads"
            out += [
                f'<text x="10" y="{y + 17}">{escape(row["contender"])}</text>',
                f'<rect x="{LABEL}" y="{y + 4}" width="{length}" height="{ROW - 8}"'
                f' fill="{colour(row)}"/>',
                f'<text x="{LABEL + length + 6}" y="{y + 17}">{row["median_ops"]:,.0f}</text>',
                f'<text x="{LABEL + BAR + 80}" y="{y + 17}"'
                f' fill="{"#d9534f" if row["lost"] else "#2e8b57"}">{lost}</text>',
            ]
            y += ROW
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("results", nargs="+", help="JSON files written with --json")
    options.add_argument("--out", default="docs/benchmark.svg")
    args = options.parse_args()
    tables = []
    for path in args.results:
        with open(path) as source:  # tables of throughput rows (not the growth table)
            tables += [table for table in json.load(source) if "rows" in table]
    with open(args.out, "w") as out:
        out.write(draw(tables))


if __name__ == "__main__":
    main()
