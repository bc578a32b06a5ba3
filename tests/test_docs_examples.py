"""The Python examples of README.md and docs/*.md run, each in a fresh interpreter.

Every fenced block opened with ```python is extracted and run by ``sys.executable -I``
(isolated mode: no PYTHONPATH, no user site, not the checkout's directory) with a
temporary directory as working directory, so an example only sees the *installed*
``sparsegat``: an import-order bug, a renamed function or a stale example fails here.

A block may declare what it needs, either in an HTML comment on the line right before
its fence or in a comment on its own first line::

    <!-- requires: cupy -->            # requires: torch_geometric
    ```python                          (first line of the block)

Requirements (comma-separated): a module name (``cupy`` also needs a CUDA device;
``torch``, ``torch_geometric``, ``numba``, ``matplotlib`` ... need only the package),
or ``data:NAME`` for a data file found by the test suite's fixture ``NAME_path``
(``data:cora``: the ``cora_path`` fixture of ``conftest.py``, which reads
``$SPARSEGAT_CORA``); the block then runs in a directory that holds that file under its
own name (``cora.npz``). A block whose requirements are missing is skipped with the
reason.

A block that is only a fragment (not meant to run on its own) says so with
``<!-- fragment: why -->`` before its fence: it is compiled (a syntax check) and
reported as skipped, never silently ignored. Keep these rare.

The pages are also checked for relative links to files (and heading anchors) that do
not exist, and for references to material outside the repository.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
#: Seconds one example may take (a first Numba call that must compile can take a while).
TIMEOUT_S = 180

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>requires|fragment)\s*:\s*(?P<value>.*?)\s*-->\s*$")
_FIRST_LINE = re.compile(r"^\s*#\s*requires\s*:\s*(?P<value>.+?)\s*$")


@dataclass
class Block:
    """One ```python block of a page."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    requires: list[str] = field(default_factory=list)
    fragment: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def _split(value: str) -> list[str]:
    return [r.strip() for r in value.split(",") if r.strip()]


def extract_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with their declared requirements."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence)
                                      and set(lines[j].strip()) == {fence[0]}):
            body.append(lines[j])
            j += 1
        language = info.split()[0].lower() if info else ""
        if language in ("python", "py"):
            block = Block(path, i + 1, textwrap.dedent("\n".join(body)) + "\n")
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = _MARKER.match(lines[k]) if k >= 0 else None
            if marker and marker.group("kind") == "requires":
                block.requires += _split(marker.group("value"))
            elif marker:
                block.fragment = marker.group("value") or "marked as a fragment"
            first = _FIRST_LINE.match(body[0]) if body else None
            if first:
                block.requires += _split(first.group("value"))
            blocks.append(block)
        i = j + 1
    return blocks


@lru_cache(maxsize=None)
def _cuda_device_count() -> int:
    probe = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    try:
        r = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip() or 0) if r.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError):
        return 0


def missing_requirement(req: str) -> str | None:
    """Why the package requirement ``req`` is not met here, or None when it is.

    ``data:`` requirements are resolved by their fixtures (see :func:`data_files`);
    anything that is neither is an error, so that a misspelt marker cannot pass.
    """
    if req.startswith("data:"):
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", req):
        raise ValueError(f"unknown requirement {req!r}: use a module name or data:FILE")
    if importlib.util.find_spec(req.split(".")[0]) is None:
        return f"needs {req}, which is not installed"
    if req.split(".")[0] == "cupy" and _cuda_device_count() < 1:
        return "needs a CUDA GPU for cupy, and none is visible"
    return None


def data_files(block: Block, request: pytest.FixtureRequest) -> list[Path]:
    """The files of the block's ``data:NAME`` requirements, from the fixtures ``NAME_path``
    (which skip the test when their file is absent)."""
    names = [req[len("data:"):] for req in block.requires if req.startswith("data:")]
    return [Path(request.getfixturevalue(f"{name}_path")) for name in names]


def run_block(block: Block, workdir: Path, files: list[Path] = ()) -> subprocess.CompletedProcess:
    """Run ``block`` in a fresh isolated interpreter with ``workdir`` as working directory,
    where ``files`` are linked under their own names."""
    for path in files:
        link = workdir / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    script = workdir / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    # Small examples on a busy CI machine: spinning BLAS/OpenMP workers that lose their
    # core turn millisecond products into tenths of a second; these change no result.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run([sys.executable, "-I", str(script)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


BLOCKS = [b for page in PAGES for b in extract_blocks(page)]


def test_pages_have_examples():
    assert (ROOT / "README.md").is_file()
    assert any(b.path.name == "README.md" for b in BLOCKS), "the README's usage snippet was not found"
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if block.fragment is not None:
        compile(block.code, block.id, "exec")
        pytest.skip(f"fragment, syntax checked only: {block.fragment}")
    reasons = [r for r in map(missing_requirement, block.requires) if r]
    if reasons:
        pytest.skip("; ".join(reasons))
    result = run_block(block, tmp_path, data_files(block, request))
    assert result.returncode == 0, (
        f"the example at {block.id} failed (exit status {result.returncode}).\n"
        f"--- code ---\n{block.code}--- stdout ---\n{result.stdout[-3000:]}\n"
        f"--- stderr ---\n{result.stderr[-6000:]}")


# ---------------------------------------------------------------------- the runner itself
def test_runner_reports_a_broken_example(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- requires: numpy, data:cora -->\n```python\nimport numpy\n```\n\n"
                    "<!-- fragment: shows a call only -->\n```python\nmodel.step()\n```\n\n"
                    "```python\n# requires: no_such_module_xyz\nraise SystemExit(3)\n```\n\n"
                    "```bash\nfalse\n```\n\n```python\nimport sparsegat\nsparsegat.no_such_name\n```\n",
                    encoding="utf-8")
    blocks = extract_blocks(page)
    assert [b.line for b in blocks] == [4, 9, 13, 22]
    assert blocks[0].requires == ["numpy", "data:cora"] and blocks[0].fragment is None
    assert blocks[1].fragment == "shows a call only"
    assert blocks[2].requires == ["no_such_module_xyz"]
    assert missing_requirement("numpy") is None
    assert "not installed" in missing_requirement("no_such_module_xyz")
    assert missing_requirement("data:cora") is None  # left to the cora_path fixture
    with pytest.raises(ValueError):
        missing_requirement("a GPU please")
    result = run_block(blocks[3], tmp_path)
    assert result.returncode != 0 and "AttributeError" in result.stderr


def test_examples_do_not_see_the_checkout(tmp_path: Path) -> None:
    """The examples import the installed package; the working directory is not on sys.path."""
    (tmp_path / "shadow_module_for_docs_test.py").write_text("X = 1\n", encoding="utf-8")
    code = ("import importlib.util\n"
            "assert importlib.util.find_spec('shadow_module_for_docs_test') is None\n")
    result = run_block(Block(tmp_path / "x.md", 1, code), tmp_path)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------- links and references
_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


def _strip_code(text: str) -> str:
    """Text without fenced blocks and inline code, where link syntax means nothing."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group("fence")
            out.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
                fence = None
            out.append("")
            continue
        out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _anchor(title: str) -> str:
    """The anchor GitHub and MyST give a heading."""
    title = re.sub(r"`", "", title).strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(m.group("title")) for line in _strip_code(path.read_text(encoding="utf-8")).splitlines()
            if (m := _HEADING.match(line))}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_point_to_existing_files(page: Path) -> None:
    bad = []
    for m in _LINK.finditer(_strip_code(page.read_text(encoding="utf-8"))):
        target = m.group("target")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif not str(dest).startswith(str(ROOT)):
            bad.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with the anchor #{anchor}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


_FORBIDDEN = [
    (re.compile(r"\.\./shared|shared/data"), "material outside the repository"),
    (re.compile(r"DESIGN\.md|DESIGN section"), "a design file that is not in the repository"),
    (re.compile(r"\bthis machine\b", re.IGNORECASE), "a particular machine"),
    (re.compile(r"\bissues? \d+\b", re.IGNORECASE), "an internal issue number"),
    (re.compile(r"/tmp/"), "a temporary path"),
]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_pages_stand_alone(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = [f"{m.group(0)!r} ({why})" for pattern, why in _FORBIDDEN for m in pattern.finditer(text)]
    assert not found, f"{page.relative_to(ROOT)} refers to " + ", ".join(found)
