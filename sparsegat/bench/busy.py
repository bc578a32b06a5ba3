"""When the machine was too busy for quiet timings: one rule for the notes and the plot.

``sparsegat bench`` records the Unix 1-minute load average at the start
(``machine.load_average_start``), with every measurement (``load_average_1min``) and
at the end (``machine.load_average``). The run itself keeps up to every CPU busy, so
the rule is stricter before the run than during and after it:

- before: more than half the CPUs (plus half a thread of slack) already taken;
- during or after: more runnable threads than CPUs plus one, i.e. something beside
  the benchmark.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def busy_at_start(load_1min: float, cpus: int) -> bool:
    """True when the load before the run leaves fewer than half the CPUs free."""
    return load_1min > 0.5 * cpus + 0.5


def busy_during_run(load_1min: float, cpus: int) -> bool:
    """True when the load during or after the run exceeds what the benchmark alone makes."""
    return load_1min > cpus + 1


def _first(load: Sequence[float] | None) -> float | None:
    """The 1-minute figure of a recorded ``[1 min, 5 min, 15 min]`` load average."""
    return float(load[0]) if load else None


def run_loads(machine: dict[str, Any], results: Iterable[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The 1-minute load average at the start, and its highest value during or after the run.

    Parameters
    ----------
    machine
        The ``machine`` section of a bench document.
    results
        The measurement records (their ``load_average_1min``).

    Returns
    -------
    (start, peak)
        Either is None where nothing was recorded (no ``os.getloadavg`` there).
    """
    start = _first(machine.get("load_average_start"))
    later = [float(r["load_average_1min"]) for r in results if r.get("load_average_1min") is not None]
    end = _first(machine.get("load_average"))
    if end is not None:
        later.append(end)
    return start, (max(later) if later else None)


def busy_warning(machine: dict[str, Any], results: Iterable[dict[str, Any]],
                 notes: Iterable[str] = ()) -> str | None:
    """The warning to print under a plot of a run on a busy machine; None when it was quiet.

    Parameters
    ----------
    machine
        The ``machine`` section of a bench document (loads and ``threads.usable_cpus``).
    results
        The measurement records.
    notes
        The run's notes: a run that judged itself busy (an older document may have used
        another rule) is reported as such even when the recorded loads pass this rule.

    Returns
    -------
    str or None
    """
    cpus = int((machine.get("threads") or {}).get("usable_cpus") or 1)
    start, peak = run_loads(machine, results)
    where = []
    if start is not None and busy_at_start(start, cpus):
        where.append(f"{start:.1f} at the start")
    if peak is not None and busy_during_run(peak, cpus):
        where.append(f"up to {peak:.1f} during the run")
    if where:
        return (f"the machine was busy (1-minute load average {' and '.join(where)} on {cpus} CPUs): "
                "timings of multi-threaded backends are noisy")
    said = next((n for n in notes if "machine is busy" in n or "machine got busy" in n), None)
    if said is not None:
        return said.split("; see ")[0]  # the pointer to the JSON is moot under a plot
    return None
