"""``sparsegat bench``: argument parsing and the sweep.

Run ``sparsegat bench --help`` for the options; ``docs/benchmarks.md`` explains
the columns and how time, bytes and memory are measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..spec import SCORES
from .graphs import FAMILIES, make_graph
from .readers import read_graph
from .runners import OPS, SPARSEGAT_BACKENDS, Case, Skip, make_inputs

PYG_NAMES = ("pyg", "pyg-cuda")
TORCH_NAMES = ("torch",)             # sparsegat.torch (sparsegat/bench/torch_runner.py)
JAX_NAMES = ("jax", "jax-pure")      # sparsegat.jax and pure JAX (sparsegat/bench/jax_runner.py)
ALL_BACKENDS = SPARSEGAT_BACKENDS + TORCH_NAMES + PYG_NAMES + JAX_NAMES
DTYPES = ("float32", "float64")
_DTYPE_ALIASES = {"f32": "float32", "fp32": "float32", "single": "float32",
                  "f64": "float64", "fp64": "float64", "double": "float64"}
PLOT_SUFFIXES = (".png", ".pdf", ".svg")

# The defaults finish in well under a minute on a 2-core CPU.
DEFAULTS = {
    "nodes": "1000,10000",
    "degree": "16",
    "family": "uniform",
    "heads": "4",
    "features": "32",
    "in_dim": 64,
    "score": "additive",
    "dtype": "float32",
    "ops": "forward,backward,layer",
    "repeat": 5,
    "warmup": 1,
    "seed": 0,
    "baseline": "numpy",
    "max_time": 10.0,
}


class BenchError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------- parsing helpers


def _parse_int(text: str, what: str, minimum: int = 1) -> int:
    t = text.strip().lower().replace("_", "")
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1000
    elif t.endswith("m"):
        t, scale = t[:-1], 1_000_000
    try:
        value = int(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
    return value


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not text.strip() or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _unique(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def int_list(what: str, minimum: int = 1) -> Callable[[str], list[int]]:
    """argparse type: ``'1000,10k,1M'`` -> ``[1000, 10000, 1000000]`` (k and M suffixes allowed)."""
    def parse(text: str) -> list[int]:
        return _unique([_parse_int(t, what, minimum) for t in _split(text, what)])
    parse.__name__ = what
    return parse


def parse_features(text: str) -> list[tuple[int, int]]:
    """argparse type: ``'32,16:64'`` -> ``[(32, 32), (16, 64)]``, pairs ``(D, Dv)``."""
    out = []
    for item in _split(text, "--features"):
        parts = item.split(":")
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"{item!r} must be D or D:Dv")
        d = _parse_int(parts[0], "--features")
        dv = _parse_int(parts[1], "--features") if len(parts) == 2 else d
        out.append((d, dv))
    return _unique(out)


def choice_list(what: str, choices: Sequence[str], aliases: dict[str, str] | None = None
                ) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of ``choices`` (or ``all``)."""
    def parse(text: str) -> list[str]:
        items = _split(text, what)
        if items == ["all"]:
            return list(choices)
        out = []
        for item in items:
            name = (aliases or {}).get(item.lower(), item.lower())
            if name not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown value {item!r}; choose from {', '.join(choices)} (or all)")
            out.append(name)
        return _unique(out)
    parse.__name__ = what
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="sparsegat bench",
        description="Time sparse attention forward, backward and a GAT layer step on every available "
                    "backend (numpy reference, numba, cupy), through sparsegat's PyTorch and JAX adapters "
                    "(torch, jax), and as PyTorch Geometric (pyg, pyg-cuda) and pure JAX (jax-pure) "
                    "compute it, over a sweep of graph sizes and shapes. Prints a table on stdout and "
                    "progress on stderr; writes JSON and a plot on request.",
        epilog="Lists are comma-separated; sizes take k/M suffixes (10k = 10000). "
               "Example: sparsegat bench --nodes 1k,10k,100k --score dot,additive --json out.json "
               "--plot out.png. See docs/benchmarks.md.",
    )
    g = p.add_argument_group("graphs")
    g.add_argument("--nodes", type=int_list("--nodes"), default=None, metavar="N[,N...]",
                   help=f"numbers of (destination) nodes to sweep (default {d['nodes']})")
    g.add_argument("--degree", type=int_list("--degree"), default=None, metavar="K[,K...]",
                   help=f"average degrees (edges per destination) to sweep (default {d['degree']})")
    g.add_argument("--family", type=choice_list("--family", FAMILIES), default=None,
                   metavar="NAME[,NAME...]",
                   help=f"synthetic families: {', '.join(FAMILIES)} (default {d['family']})")
    g.add_argument("--graph", action="append", default=None, metavar="FILE",
                   help="benchmark your own graph instead of synthetic ones: a scipy.sparse .npz "
                        "(or arrays indptr/indices), a Matrix Market .mtx, or an edge list "
                        "(two integer columns 'src dst', '#' comments); may be repeated")
    g.add_argument("--symmetrize", action="store_true",
                   help="add the reverse of every edge of --graph files")
    s = p.add_argument_group("shapes")
    s.add_argument("--heads", type=int_list("--heads"), default=None, metavar="H[,H...]",
                   help=f"attention heads (default {d['heads']})")
    s.add_argument("--features", type=parse_features, default=None, metavar="D[:Dv][,...]",
                   help=f"query/key size D and value size Dv (D alone means Dv = D; default {d['features']}); "
                        "for the layer step Dv is the output size per head")
    s.add_argument("--in-dim", type=lambda t: _parse_int(t, "--in-dim"), default=d["in_dim"], metavar="F",
                   help=f"input features of the layer step (default {d['in_dim']})")
    s.add_argument("--score", type=choice_list("--score", SCORES), default=None, metavar="S[,S...]",
                   help=f"score functions: {', '.join(SCORES)} or all (default {d['score']})")
    s.add_argument("--dtype", type=choice_list("--dtype", DTYPES, _DTYPE_ALIASES), default=None,
                   metavar="T[,T...]", help=f"float32 and/or float64 (default {d['dtype']})")
    r = p.add_argument_group("what and how")
    r.add_argument("--ops", type=choice_list("--ops", OPS), default=None, metavar="OP[,OP...]",
                   help=f"operations: {', '.join(OPS)} or all (default {d['ops']})")
    r.add_argument("--backends", type=choice_list("--backends", ALL_BACKENDS), default=None,
                   metavar="B[,B...]",
                   help=f"{', '.join(ALL_BACKENDS)} (default: every one available here; "
                        "unavailable ones are skipped with a note)")
    r.add_argument("--no-pyg", action="store_true", help="do not run PyTorch Geometric")
    r.add_argument("--baseline", choices=ALL_BACKENDS, default=d["baseline"],
                   help=f"backend the speed-up column divides by (default {d['baseline']})")
    r.add_argument("--repeat", type=lambda t: _parse_int(t, "--repeat"), default=d["repeat"], metavar="R",
                   help=f"timed repetitions per measurement (default {d['repeat']})")
    r.add_argument("--warmup", type=lambda t: _parse_int(t, "--warmup", 0), default=d["warmup"],
                   metavar="W", help=f"untimed calls after the first call (default {d['warmup']})")
    r.add_argument("--max-time", type=_positive_float, default=d["max_time"], metavar="SEC",
                   help="stop repeating a measurement after SEC seconds of timed calls, keeping at "
                        f"least 3 (default {d['max_time']:g})")
    r.add_argument("--seed", type=lambda t: _parse_int(t, "--seed", 0), default=d["seed"],
                   help=f"seed of the synthetic graphs and inputs (default {d['seed']})")
    r.add_argument("--threads", type=lambda t: _parse_int(t, "--threads"), default=None, metavar="N",
                   help="threads for numba (also under the torch and jax adapters) and torch "
                        "(default: their own, all CPUs); NumPy's BLAS follows "
                        "OMP_NUM_THREADS/OPENBLAS_NUM_THREADS, JAX's XLA keeps its own")
    r.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory probe (one extra call per measurement)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write every measurement and the machine description")
    o.add_argument("--plot", metavar="FILE.png",
                   help="plot time and speed-up per backend and graph (needs matplotlib; .png, .pdf, .svg)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    o.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    return p


def _fill_defaults(args: argparse.Namespace, notes: list[str]) -> None:
    parsers = {"nodes": int_list("--nodes"), "degree": int_list("--degree"),
               "family": choice_list("--family", FAMILIES), "heads": int_list("--heads"),
               "features": parse_features, "score": choice_list("--score", SCORES),
               "dtype": choice_list("--dtype", DTYPES), "ops": choice_list("--ops", OPS)}
    if args.graph:
        given = [f"--{k}" for k in ("nodes", "degree", "family") if getattr(args, k) is not None]
        if given:
            notes.append(f"{', '.join(given)} ignored: --graph files are benchmarked instead")
    elif args.symmetrize:
        notes.append("--symmetrize applies only to --graph files; ignored")
    for key, parse in parsers.items():
        if getattr(args, key) is None:
            setattr(args, key, parse(DEFAULTS[key]))


# ---------------------------------------------------------------------------- setup


def _check_output(path: str | None, what: str, suffixes: Sequence[str] | None = None) -> None:
    if path is None:
        return
    if suffixes and not path.lower().endswith(tuple(suffixes)):
        raise BenchError(f"{what} {path!r} must end with one of {', '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BenchError(f"cannot write {what} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise BenchError(f"cannot write {what} {path!r}: folder {folder!r} is not writable")
    if os.path.isdir(path):
        raise BenchError(f"cannot write {what} {path!r}: it is a directory")


def _select_backends(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Runners of the usable backends, and the reason each other requested one is skipped."""
    from .runners import SparsegatRunner, sparsegat_backend_status

    requested = list(args.backends) if args.backends else list(ALL_BACKENDS)
    explicit = args.backends is not None
    skipped: dict[str, str] = {}
    if args.no_pyg:
        for name in PYG_NAMES:
            if name in requested:
                requested.remove(name)
                if explicit:
                    skipped[name] = "--no-pyg"
    runners: dict[str, Any] = {}
    for name in requested:
        if name in PYG_NAMES:
            from .pyg import PygRunner, pyg_status

            reason = pyg_status(name)
            if reason is None:
                runners[name] = PygRunner(name)
        elif name in TORCH_NAMES:
            from .torch_runner import TorchRunner, torch_status

            reason = torch_status(name)
            if reason is None:
                runners[name] = TorchRunner(name)
        elif name in JAX_NAMES:
            from .jax_runner import JaxRunner, jax_status

            reason = jax_status(name)
            if reason is None:
                runners[name] = JaxRunner(name)
        else:
            reason = sparsegat_backend_status(name)
            if reason is None:
                runners[name] = SparsegatRunner(name)
        if reason is not None:
            skipped[name] = reason
    if not runners:
        raise BenchError("no backend can run here: "
                         + "; ".join(f"{n}: {r}" for n, r in skipped.items()))
    return runners, skipped


def _load_graphs(args: argparse.Namespace) -> list[Any]:
    if args.graph:
        return [read_graph(path, symmetrize=args.symmetrize) for path in args.graph]
    graphs = []
    for family in args.family:
        for n in args.nodes:
            for k in args.degree:
                graphs.append(make_graph(family, n, k, seed=args.seed))
    return graphs


def _describe_graph(bg: Any) -> dict[str, Any]:
    """:meth:`BenchGraph.describe`, plus the edges with self-loops added for square graphs."""
    desc = bg.describe()
    g = bg.graph
    if g.n_dst == g.n_src:
        loops = int((g.row_ids() == g.indices).sum())
        desc["nnz_with_self_loops"] = int(g.nnz + g.n_dst - loops)
    return desc


def enumerate_cases(args: argparse.Namespace, n_graphs: int) -> list[Case]:
    """Every (graph, op, shape, score, dtype) to run, without repeats, in run order."""
    cases: dict[tuple, Case] = {}
    for gi in range(n_graphs):
        for dtype in args.dtype:
            for heads in args.heads:
                for d, dv in args.features:
                    for score in args.score:
                        for op in args.ops:
                            if op == "layer":
                                continue
                            c = Case(gi, op, heads, None if score == "additive" else d, dv, score, dtype)
                            cases.setdefault(c.key(), c)
                    if "layer" in args.ops:
                        c = Case(gi, "layer", heads, None, dv, "additive", dtype, args.in_dim)
                        cases.setdefault(c.key(), c)
    return list(cases.values())


def _set_threads(threads: int | None, runners: dict[str, Any]) -> None:
    if threads is None:
        return
    # The adapters' kernels (torch, jax) are numba's where numba is the default CPU backend.
    if "numba" in runners or any(getattr(r, "kernel_backend", None) == "numba" for r in runners.values()):
        import numba

        if threads > numba.config.NUMBA_NUM_THREADS:
            raise BenchError(f"--threads {threads} exceeds numba's maximum of {numba.config.NUMBA_NUM_THREADS} "
                             "(set NUMBA_NUM_THREADS to raise it)")
        numba.set_num_threads(threads)
    if any(name in runners for name in PYG_NAMES + TORCH_NAMES):
        import torch

        torch.set_num_threads(threads)


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _busy_note() -> str | None:
    """A warning when other processes keep the CPUs busy (Unix load average)."""
    from .busy import busy_at_start
    from .timing import cpu_threads

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = cpu_threads()
    if busy_at_start(load, cpus):
        return (f"the machine is busy (1-minute load average {load:.1f} on {cpus} CPUs): "
                "timings of multi-threaded backends will be noisy")
    return None


# ---------------------------------------------------------------------------- the run


class Progress:
    """Progress lines on stderr (nothing with ``--quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, text: str, end: str = "\n") -> None:
        if not self.quiet:
            print(text, end=end, file=sys.stderr, flush=True)


def _error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class Setup:
    """What the sweep runs with: the backends, the notes so far, the machine's load."""

    runners: dict[str, Any]
    skipped: dict[str, str]
    notes: list[str]
    progress: Progress
    busy: str | None = None
    load_start: list[float] | None = None

    def note(self, text: str) -> None:
        """Record a note for the report and show it as progress."""
        self.notes.append(text)
        self.progress(f"note: {text}")


@dataclass
class Sweep:
    """The graphs, the cases and what measuring them gave."""

    graphs: list[Any]
    graph_desc: list[dict[str, Any]]
    cases: list[Case]
    results: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _set_up(args: argparse.Namespace) -> Setup:
    """Defaults, output checks, backends and threads; every note is shown as it comes."""
    from .report import matplotlib_available

    load_start = _load_average()
    progress = Progress(args.quiet)
    notes: list[str] = []
    _fill_defaults(args, notes)
    _check_output(args.json, "--json file")
    _check_output(args.plot, "--plot file", PLOT_SUFFIXES)
    if args.plot and not matplotlib_available():
        notes.append("--plot ignored: matplotlib is not installed (pip install 'sparsegat[bench]')")
        args.plot = None
    for note in notes:
        progress(f"note: {note}")
    runners, skipped = _select_backends(args)
    setup = Setup(runners, skipped, notes, progress, load_start=load_start)
    for name, reason in skipped.items():
        setup.note(f"backend {name} skipped: {reason}")
    _set_threads(args.threads, runners)
    jax_run = [name for name in runners if name in JAX_NAMES]
    if jax_run and "float64" in args.dtype:
        from .jax_runner import enable_x64

        if enable_x64():
            setup.note(f"jax_enable_x64 turned on for the float64 cases of {', '.join(jax_run)} "
                       "(float32 arrays stay float32)")
    setup.busy = _busy_note()
    if setup.busy:
        setup.note(setup.busy)
    if args.baseline not in runners:
        setup.note(f"baseline {args.baseline} is not run here, so the speed-up column stays empty")
    return setup


def _plan_sweep(args: argparse.Namespace, setup: Setup) -> Sweep:
    """Build or read the graphs and list the cases."""
    setup.progress("reading graph files" if args.graph else "building graphs")
    graphs = _load_graphs(args)
    sweep = Sweep(graphs, [_describe_graph(bg) for bg in graphs], enumerate_cases(args, len(graphs)))
    setup.progress(f"{len(graphs)} graph(s), {len(sweep.cases)} case(s), backends {', '.join(setup.runners)}: "
                   f"{len(sweep.cases) * len(setup.runners)} measurement(s)")
    return sweep


def _inputs_key(case: Case) -> tuple:
    """Cases with equal keys share their host inputs."""
    return (case.graph_index, case.heads, case.d, case.dv, case.score, case.dtype, case.in_dim,
            case.op == "layer")


def _measure_one(args: argparse.Namespace, case: Case, bg: Any, inputs: Any, name: str, runner: Any,
                 progress: Progress) -> dict[str, Any]:
    """One measurement of ``case`` on backend ``name``: its result record (ok, skipped or error)."""
    from . import timing

    result: dict[str, Any] = {
        "graph_index": case.graph_index, "graph": bg.name, "backend": name,
        "device": runner.device, "implementation": runner.implementation(case.op),
        "config": case.config(), "label": case.label(), "status": "ok",
        "load_average_1min": _load1(),
    }
    try:
        fn = runner.prepare(case, bg, inputs)
        clock, host_probe, gpu_probe = runner.clock_and_probes(not args.no_memory)
        m = timing.measure(fn, clock=clock, warmup=args.warmup, repeat=args.repeat, max_time=args.max_time,
                           host_probe=host_probe, gpu_probe=gpu_probe)
        del fn
        result.update(m.as_dict())
        progress(f"{timing.format_seconds(result['median_s'])} (first call {timing.format_seconds(m.first_s)})")
    except Skip as exc:
        result.update(status="skipped", reason=str(exc))
        progress(f"skipped: {exc}")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing backend is reported, and the sweep goes on
        result.update(status="error", error=_error_text(exc))
        if args.traceback:
            result["traceback"] = traceback.format_exc()
        progress(f"ERROR {_error_text(exc)}")
    return result


def _run_sweep(args: argparse.Namespace, setup: Setup, sweep: Sweep) -> None:
    """Measure every case on every backend into ``sweep.results``; Ctrl-C keeps what was measured."""
    runners, progress = setup.runners, setup.progress
    total = len(sweep.cases) * len(runners)
    width = len(str(total))
    inputs_cache: dict[tuple, Any] = {}
    try:
        for case in sweep.cases:
            bg = sweep.graphs[case.graph_index]
            key = _inputs_key(case)
            if key not in inputs_cache:
                inputs_cache.clear()
                inputs_cache[key] = make_inputs(case, bg.graph, args.seed)
            for name, runner in runners.items():
                progress(f"[{len(sweep.results) + 1:>{width}}/{total}] {case.op:<8} {bg.name}  {case.label()}  "
                         f"{name:<8} ... ", end="")
                sweep.results.append(_measure_one(args, case, bg, inputs_cache[key], name, runner, progress))
    except KeyboardInterrupt:  # keep what was measured: report it, then exit 130
        sweep.interrupted = True
        progress("\ninterrupted")
        setup.notes.append(f"interrupted after {len(sweep.results)} of {total} measurement(s)")


def _note_run_problems(setup: Setup, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Notes on load that grew during the run and on failed measurements; returns the failures."""
    from .busy import busy_during_run
    from .timing import cpu_threads

    loads = [r["load_average_1min"] for r in results if r.get("load_average_1min") is not None]
    # The run itself keeps up to every CPU busy, so only more runnable threads than CPUs count.
    if loads and not setup.busy and busy_during_run(max(loads), cpu_threads()):
        setup.notes.append(f"the machine got busy during the run (1-minute load average up to {max(loads):.1f} "
                           f"on {cpu_threads()} CPUs): later timings may be noisy; see load_average_1min in "
                           "the JSON")
    errors = [r for r in results if r["status"] == "error"]
    if errors:
        setup.notes.append(f"{len(errors)} measurement(s) failed: "
                           + "; ".join(f"{r['backend']} {r['config']['op']} ({r['error']})" for r in errors[:3])
                           + (" ..." if len(errors) > 3 else ""))
    return errors


def _write_plot(path: str, sweep: Sweep, machine: dict[str, Any], setup: Setup, baseline: str) -> bool:
    """Draw the plot (machine and load in its caption); False (with a note) when that fails."""
    from .plot import plot

    try:
        plot(sweep.results, sweep.graph_desc, path, machine=machine, baseline=baseline, notes=setup.notes)
    except Exception as exc:  # a plot problem must not lose the measurements
        setup.notes.append(f"no plot: {_error_text(exc)}")
        return False
    setup.progress(f"wrote {path}")
    return True


def _document(args: argparse.Namespace, argv: Sequence[str], setup: Setup, sweep: Sweep,
              machine: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The JSON document of the run (schema :data:`sparsegat.bench.report.SCHEMA`)."""
    from .report import SCHEMA

    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "sparsegat bench " + " ".join(shlex.quote(a) for a in argv),
        "argv": list(argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("traceback",)},
        "machine": machine,
        "backends": {"run": list(setup.runners), "skipped": setup.skipped},
        "baseline": args.baseline,
        "graphs": sweep.graph_desc,
        "results": sweep.results,
        "notes": setup.notes,
        "elapsed_s": elapsed,
    }


def _write_document(path: str, document: dict[str, Any], setup: Setup) -> bool:
    """Write the JSON file; False (with a note) when that fails."""
    from .report import write_json

    try:
        write_json(path, document)
    except OSError as exc:
        setup.notes.append(f"could not write {path}: {_error_text(exc)}")
        return False
    setup.progress(f"wrote {path}")
    return True


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the sweep ``args`` describes, print the table and notes, write the outputs; the exit status."""
    from .report import add_derived, format_table, machine_info

    started = time.perf_counter()
    setup = _set_up(args)
    sweep = _plan_sweep(args, setup)
    _run_sweep(args, setup, sweep)
    errors = _note_run_problems(setup, sweep.results)
    add_derived(sweep.results, sweep.graph_desc, args.baseline)
    elapsed = time.perf_counter() - started
    machine = machine_info()
    machine["load_average_start"] = setup.load_start
    written = True
    if args.plot:
        written &= _write_plot(args.plot, sweep, machine, setup, args.baseline)
    if args.json:
        written &= _write_document(args.json, _document(args, argv, setup, sweep, machine, elapsed), setup)
    print(format_table(sweep.results, sweep.graph_desc, args.baseline))
    if setup.notes:
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in setup.notes))
    setup.progress(f"done in {elapsed:.1f} s")
    if sweep.interrupted:
        return 130
    return 1 if errors or not written else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparsegat bench``; returns the exit status (never raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return run(args, argv)
    except BrokenPipeError:  # e.g. `sparsegat bench | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except FileNotFoundError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sparsegat bench: error: {where}{' '.join(str(exc.strerror or exc).split())}", file=sys.stderr)
        return 1
    except (BenchError, ValueError, OSError) as exc:
        print(f"sparsegat bench: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except MemoryError:
        if args.traceback:
            traceback.print_exc()
        print("sparsegat bench: error: out of memory (use smaller graphs or fewer sizes)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsparsegat bench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, never a traceback, unless asked for
        if args.traceback:
            traceback.print_exc()
        print(f"sparsegat bench: internal error: {_error_text(exc)} (rerun with --traceback for details)",
              file=sys.stderr)
        return 1
