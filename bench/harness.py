"""Run contenders side by side in one run: P processes, interleaved rounds, medians, ratios.

A contender is a ``setup(location) -> step`` function, run in each worker
process (so each opens its own connections and files), and a
``final(location) -> int`` that reads the shared value afterwards: with every
step adding 1, ``processes * ops - final`` is the number of lost updates
(``final`` is None for a contender that only reads).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Contender:
    setup: Callable[[str], Callable[[], Any]]
    final: Callable[[str], int] | None


def _worker(
    setup: Callable[[str], Callable[[], Any]], location: str, ops: int, start: Any, done: Any
) -> None:
    step = setup(location)
    step()  # warm up: imports, connections, files
    start.wait()
    for _ in range(ops - 1):
        step()
    done.put(time.perf_counter())


def run_once(
    contender: Contender, location: str, processes: int, ops: int
) -> tuple[float, int | None]:
    """One round: ops/s over all processes, and lost updates (None for reads)."""
    ctx = mp.get_context("fork")
    start = ctx.Barrier(processes + 1)
    done = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(contender.setup, location, ops, start, done))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    ends = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    rate = processes * (ops - 1) / (max(ends) - began)
    if contender.final is None:
        return rate, None
    return rate, processes * ops - contender.final(location)


def compare(
    title: str,
    contenders: dict[str, Contender],
    baselines: dict[str, str],
    new_location: Callable[[str], str],
    processes: int,
    ops: int,
    rounds: int,
) -> dict[str, Any]:
    """Run every contender ``rounds`` times, interleaved, and print one table.

    ``baselines`` maps a contender to the one its ratio is computed against;
    ``new_location(name)`` gives a fresh, empty place for one round. Returns
    the table's rows, for ``--json`` and the chart (``bench/chart.py``).
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    lost: dict[str, int | None] = dict.fromkeys(contenders, 0)
    for round_number in range(rounds):
        order = list(contenders.items())
        if round_number % 2:  # alternate the order, so that no contender always goes first
            order.reverse()
        for name, contender in order:
            rate, missing = run_once(contender, new_location(name), processes, ops)
            rates[name].append(rate)
            before = lost[name]
            lost[name] = None if missing is None or before is None else before + missing
    total = rounds * processes * ops
    rows: list[dict[str, Any]] = []
    print(f"{title}: {processes} processes x {ops} operations, {rounds} rounds")
    header = ("contender", "median ops/s", "min-max", "ratio", "lost updates", "ratio to")
    print("{:34} {:>12} {:>15} {:>7} {:>18}  {}".format(*header))
    for name in contenders:
        median = statistics.median(rates[name])
        spread = f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}"
        base = baselines.get(name)
        ratio = "-"
        if base is not None:  # per-round ratios: both ran within seconds of each other
            ratios = [mine / theirs for mine, theirs in zip(rates[name], rates[base], strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
        lost_text = "-" if lost[name] is None else f"{lost[name]} of {total}"
        print(f"{name:34} {median:12,.0f} {spread:>15} {ratio:>7} {lost_text:>18}  {base or ''}")
        rows.append({"contender": name, "median_ops": median, "ratio": ratio, "baseline": base,
                     "lost": lost[name], "total": total})  # fmt: skip
    print()
    return {"title": title, "rows": rows}


def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    options = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--processes", "-p", type=int, default=4)
    options.add_argument("--ops", type=int, default=2000, help="operations per process per round")
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--json", help="also write the tables to this file, for bench/chart.py")
    return options


def save(path: str | None, tables: list[dict[str, Any]]) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(tables, out, indent=1)
