"""The README's links and result files: every contents link reaches a heading, every committed
record it cites exists."""

import re
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
