"""The README's and the study log's links point at files and headings that exist."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/cfpb_long_tail_study.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    # GitHub's anchor rule: lower case, drop punctuation but keep hyphens and underscores, spaces to hyphens
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = REPO / doc
    links = [link for link in LINK.findall(path.read_text()) if not re.match(r"[a-z]+://", link)]
    assert links, f"{doc} has no relative links to check"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.is_file():
            broken.append(link)
        elif anchor and anchor not in anchors(file):
            broken.append(link)
    assert not broken, f"{doc}: links to missing files or headings: {broken}"


def test_slug_follows_github():
    assert slug("Winning the long tail: probe, LP-FT, compare, ensemble") == (
        "winning-the-long-tail-probe-lp-ft-compare-ensemble"
    )
