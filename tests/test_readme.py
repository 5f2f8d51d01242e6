"""The README's links, result files and API names: every contents link reaches a heading, every
committed record it cites exists, every library name it mentions exists, and every library call in
its Python examples fits the callee's signature."""

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def headings(text: str) -> list[str]:
    """Markdown headings outside code blocks."""
    found, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)$", line)):
            found.append(match.group(1))
    return found


def anchors(titles: list[str]) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for title in titles:
        anchor = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        if count:
            seen[f"{anchor}-{count}"] = 1
    return set(seen)


def test_anchors_follow_githubs_rules():
    titles = ["CPU and CUDA (`device=auto`)", "Python API", "Python API", "N = 20, ℓ1"]
    assert anchors(titles) == {"cpu-and-cuda-deviceauto", "python-api", "python-api-1", "n--20-ℓ1"}


def test_every_link_inside_the_readme_reaches_a_heading():
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links and not links - anchors(headings(README))


def test_every_result_file_the_readme_cites_is_committed():
    cited = set(re.findall(r"results/[\w\-.]+\.(?:json|png)", README))
    assert cited and not {path for path in cited if not (REPO / path).is_file()}


def resolve(dotted: str) -> object:
    """The object a dotted name such as ``tda.scores.write_scores`` names (modules imported)."""
    parts = dotted.split(".")
    found = importlib.import_module(parts[0])
    for count, part in enumerate(parts[1:], start=2):
        if hasattr(found, part):
            found = getattr(found, part)
        else:
            found = importlib.import_module(".".join(parts[:count]))
    return found


def test_every_library_name_the_readme_mentions_exists():
    names = set(re.findall(r"\b((?:tda|unlearn)(?:\.[A-Za-z_]\w*)+)", README))
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert len(names) > 50 and not missing


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for an attribute chain on a plain name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def test_every_library_call_in_the_python_examples_fits_its_signature():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    calls, misfits = 0, []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            name = dotted(node.func) if isinstance(node, ast.Call) else None
            if name is None or name.split(".")[0] not in ("tda", "unlearn"):
                continue
            if any(isinstance(a, ast.Starred) for a in node.args):
                continue
            calls += 1
            keywords = {k.arg: None for k in node.keywords if k.arg}
            try:
                inspect.signature(resolve(name)).bind_partial(*node.args, **keywords)
            except TypeError as error:
                misfits.append(f"{name}: {error}")
    assert len(blocks) >= 5 and calls > 30 and not misfits


IMPORT = re.compile(
    r"\b(?:from\s+((?:tda|unlearn)(?:\.\w+)+)\s+import|import\s+((?:tda|unlearn)(?:\.\w+)+))"
)
NAME = re.compile(r"\b((?:tda|unlearn)(?:\.[A-Za-z_]\w*)+)")
REACHABLE = """
import importlib, json, sys
import tda, unlearn
unreachable = []
for imports, names in json.load(sys.stdin):
    for module in imports:
        importlib.import_module(module)
    for name in names:
        found = sys.modules[name.split(".")[0]]
        try:
            for part in name.split(".")[1:]:
                found = getattr(found, part)
        except AttributeError:
            unreachable.append(name)
print(json.dumps(unreachable))
"""


def test_every_name_in_the_python_examples_is_reachable_as_written():
    """After ``import tda, unlearn`` and the imports the blocks show (comments included), in
    order, every dotted name in a block is an attribute chain. ``resolve`` above imports the
    modules it meets, so it passed ``tda.scores.write_scores``, which raised AttributeError
    after ``import tda``. A fresh interpreter: other tests' imports would hide the problem."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    plan = [
        ([a or b for a, b in IMPORT.findall(block)], sorted(set(NAME.findall(block))))
        for block in blocks
    ]
    run = subprocess.run(
        [sys.executable, "-c", REACHABLE],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        check=True,
    )
    assert sum(len(names) for _, names in plan) > 30
    assert json.loads(run.stdout) == []
