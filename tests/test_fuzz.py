"""Fuzz suite: malformed CSR arrays, SciPy matrices, operator inputs and files, each batch run
in a fresh interpreter (a case may crash the process; none may).

The cases are drawn by the hypothesis strategies of ``fuzz_cases.py``; every case must end
as ``ok`` (accepted, results finite and equal across backends, inputs unmodified) or
``refused`` (``ValueError``/``TypeError`` with a message). A crash, a hang, another
exception class or a failed check fails the test and names the case.

In CI a few hundred cases run (about half a minute). The longer campaign is
``pytest -m fuzz tests/test_fuzz.py`` (``SPARSEGAT_FUZZ_CASES`` cases per kind, 2000 by
default); its last results are recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_cases

HERE = Path(__file__).resolve().parent
KINDS = {
    "csr": fuzz_cases.malformed_csr,
    "scipy": fuzz_cases.scipy_matrices,
    "operator": fuzz_cases.operator_inputs,
    "file": fuzz_cases.malformed_files,
}
#: Cases per kind in the default (CI) run, and seconds a batch may take.
CI_CASES = 60
BATCH_TIMEOUT = 600


def draw_cases(kind: str, count: int, seed: int) -> list[dict]:
    """``count`` cases of ``kind`` drawn by hypothesis (the strategy is the generator;
    nothing fails inside, so there is no shrinking: the child names failing cases)."""
    cases: list[dict] = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(KINDS[kind]())
    def collect(case: dict) -> None:
        cases.append(case)

    collect._hypothesis_internal_use_seed = seed  # reproducible batches
    collect()
    return cases


def run_batch(cases: list[dict], tmp_path: Path, child: Path = HERE / "fuzz_cases.py") -> collections.Counter:
    """Run ``cases`` in a child interpreter; fail naming the first case that went wrong."""
    batch = tmp_path / "cases.pkl"
    batch.write_bytes(pickle.dumps(cases))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="2", PYTHONPATH=str(HERE))
    try:
        res = subprocess.run([sys.executable, str(child), str(batch)], capture_output=True,
                             text=True, timeout=BATCH_TIMEOUT, env=env)
        stdout, returncode, stderr = res.stdout, res.returncode, res.stderr
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        returncode, stderr = "timeout", ""
    started, outcomes = None, {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if parts[0] == "start":
            started = int(parts[1])
        elif parts[0] == "end":
            outcomes[int(parts[1])] = parts[2]
    if len(outcomes) < len(cases):
        culprit = started if started is not None else 0
        pytest.fail(f"the child died ({returncode}) on case {culprit}: {cases[culprit]!r}\n{stderr[-2000:]}")
    bad = {i: o for i, o in outcomes.items() if o not in ("ok", "refused")}
    if bad:
        lines = [f"case {i}: {o}\n    {cases[i]!r}"[:1500] for i, o in list(bad.items())[:5]]
        pytest.fail(f"{len(bad)} of {len(cases)} cases went wrong:\n" + "\n".join(lines))
    return collections.Counter(outcomes.values())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fuzz_batch(kind, tmp_path):
    counts = run_batch(draw_cases(kind, CI_CASES, seed=12345), tmp_path)
    assert sum(counts.values()) == CI_CASES
    assert counts["refused"] > 0  # the strategies do reach malformed input


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fuzz_campaign(kind, tmp_path):
    """The longer campaign (deselected by default): ``pytest -m fuzz tests/test_fuzz.py``."""
    total = int(os.environ.get("SPARSEGAT_FUZZ_CASES", "2000"))
    seed = int(os.environ.get("SPARSEGAT_FUZZ_SEED", "0"))
    counts: collections.Counter = collections.Counter()
    for start in range(0, total, 250):
        counts += run_batch(draw_cases(kind, min(250, total - start), seed=seed + start), tmp_path)
    print(f"fuzz {kind}: {total} cases, {dict(counts)}")


def test_the_runner_reports_a_crash_and_a_bad_outcome(tmp_path):
    """A case that kills the child is reported with the case, and so is a wrong exception."""
    script = tmp_path / "child.py"
    script.write_text(
        "import os, sys, fuzz_cases\n"
        "def run(case, workdir):\n"
        "    if case['how'] == 'abort':\n"
        "        os.abort()\n"
        "    return 'ok' if case['how'] == 'ok' else 'bad: KeyError: x'\n"
        "fuzz_cases.run_case = run\n"
        "fuzz_cases.main(sys.argv[1])\n")
    assert run_batch([{"how": "ok"}], tmp_path, child=script) == {"ok": 1}
    with pytest.raises(pytest.fail.Exception, match=r"died .* on case 1: \{'how': 'abort'\}"):
        run_batch([{"how": "ok"}, {"how": "abort"}, {"how": "ok"}], tmp_path, child=script)
    with pytest.raises(pytest.fail.Exception, match="1 of 2 cases went wrong"):
        run_batch([{"how": "ok"}, {"how": "bad"}], tmp_path, child=script)
