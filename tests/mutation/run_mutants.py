#!/usr/bin/env python
"""Mutation testing on demand (not part of CI): apply hand-written mutants one at a time to a
temporary copy of the repository, run a targeted pytest selection for each, and report
which were killed (a test failed or the run timed out), which survived, and the score.

    python tests/mutation/run_mutants.py                 # every mutant of mutants.py
    python tests/mutation/run_mutants.py --only nb-two-pass-rowmax-off-by-one csr-last-indptr-step-unchecked
    python tests/mutation/run_mutants.py --list
    python tests/mutation/run_mutants.py --timeout 600 --json results.json

The working tree is never touched: the tracked and untracked-but-not-ignored files are
copied (read through ``git ls-files``, which changes nothing) into a temporary folder,
each mutant is applied there and reverted afterwards, and pytest runs there with that
copy first on ``PYTHONPATH`` (the copy's ``sparsegat`` shadows an editable install).
Numba's cache is shared between the runs (``NUMBA_CACHE_DIR`` in the temporary folder),
so only mutants of the numba kernels recompile them. A baseline run of every selection
on the unmutated copy comes first (``--no-baseline`` skips it): a selection that fails
without a mutant makes its mutants meaningless and is reported as such.

Mutants (``mutants.py``) name an exact snippet that must occur exactly once; a snippet
no longer found is reported as *stale* and left out of the score.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mutants import MUTANTS  # noqa: E402

ROOT = HERE.parents[1]


def copy_repository(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        rel = f.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run_pytest(copy: Path, args: list[str], timeout: float, env: dict) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, tail of the output)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return "timeout", time.perf_counter() - t0, out[-800:]
    status = "passed" if p.returncode == 0 else ("failed" if p.returncode == 1 else f"error rc={p.returncode}")
    return status, time.perf_counter() - t0, (p.stdout + p.stderr)[-800:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated baseline runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--json", help="write the results to this file")
    opts = ap.parse_args(argv)

    mutants = MUTANTS
    if opts.only:
        unknown = set(opts.only) - {m["id"] for m in MUTANTS}
        if unknown:
            ap.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in MUTANTS if m["id"] in opts.only]
    if opts.list:
        for m in mutants:
            print(f"{m['id']:40s} {m['file']}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="sparsegat-mutants-"))
    copy = tmp / "repo"
    copy_repository(copy)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["NUMBA_CACHE_DIR"] = str(tmp / "numba-cache")
    env.setdefault("HYPOTHESIS_PROFILE", "ci")  # the suite's profile: deadline=None
    print(f"copy: {copy}", flush=True)

    results = []
    baseline: dict[tuple, str] = {}
    try:
        if not opts.no_baseline:
            for args in {tuple(m["tests"]) for m in mutants}:
                status, secs, tail = run_pytest(copy, list(args), opts.timeout, env)
                baseline[args] = status
                print(f"baseline {status:8s} {secs:6.1f}s  {' '.join(args)}", flush=True)
                if status != "passed":
                    print(tail, flush=True)
        for m in mutants:
            path = copy / m["file"]
            text = path.read_text() if path.is_file() else ""
            count = text.count(m["original"])
            if count != 1:
                res = dict(id=m["id"], status="stale", detail=f"snippet found {count} times in {m['file']}")
            elif baseline.get(tuple(m["tests"]), "passed") != "passed":
                res = dict(id=m["id"], status="invalid", detail="its tests fail without the mutant")
            else:
                path.write_text(text.replace(m["original"], m["replacement"]))
                try:
                    status, secs, tail = run_pytest(copy, m["tests"], opts.timeout, env)
                finally:
                    path.write_text(text)
                verdict = "survived" if status == "passed" else "killed"
                res = dict(id=m["id"], status=verdict, detail=f"pytest {status} in {secs:.1f}s",
                           tail=tail if verdict == "killed" else "")
            results.append(res)
            print(f"{res['status']:8s} {res['id']:40s} {res['detail']}", flush=True)
    finally:
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    scored = [r for r in results if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in scored)
    score = 100.0 * killed / len(scored) if scored else float("nan")
    print(f"\n{killed}/{len(scored)} killed: mutation score {score:.0f}%"
          + "".join(f"; {sum(r['status'] == s for r in results)} {s}" for s in ("stale", "invalid")
                    if any(r["status"] == s for r in results)))
    for r in results:
        if r["status"] == "survived":
            print(f"  survived: {r['id']}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(dict(results=results, killed=killed, scored=len(scored),
                                                   score=score), indent=1))
    return 0 if scored and killed == len(scored) else 1


if __name__ == "__main__":
    sys.exit(main())
