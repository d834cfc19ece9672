"""Every relative link in the hand-written documentation resolves: README.md, benchmarks/README.md,
docs/*.md and every README.md under docs/ (the evidence index and each evidence folder's README).
A link to a markdown file's heading must name a heading that file has (GitHub's anchors).

Left out: the other markdown files under docs/evidence/, which are run artifacts kept verbatim and
hashed in their folder's MANIFEST.sha256 (reports/eN.md, compare.md, RECHECKED.md as the workflow
wrote them)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# [text](target) or ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def documents() -> list[Path]:
    docs = REPO / "docs"
    found = {REPO / "README.md", REPO / "benchmarks" / "README.md", *docs.glob("*.md"), *docs.rglob("README.md")}
    return sorted(p for p in found if p.is_file())


def _prose_lines(text: str, blank_code: bool = True):
    """(line number, line) outside fenced code blocks; inline code spans blanked unless told."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, CODE_SPAN.sub("", line) if blank_code else line


def links(path: Path) -> list[tuple[int, str]]:
    return [(n, m.group("target")) for n, line in _prose_lines(path.read_text(encoding="utf-8"))
            for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"`|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8"), blank_code=False):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken(path: Path, root: Path = REPO) -> list[str]:
    problems = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


def test_the_documents_include_the_readme_the_docs_and_the_evidence_readmes():
    names = {p.relative_to(REPO).as_posix() for p in documents()}
    assert {"README.md", "docs/statistics.md", "docs/columns.md", "docs/evidence/README.md"} <= names
    assert any(n.startswith("docs/evidence/2026-") and n.endswith("/README.md") for n in names)
    assert not any(n.endswith("/reports/e1.md") for n in names), "run artifacts are not checked"


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(path):
    assert broken(path) == []


def test_the_checker_finds_a_missing_file_a_missing_heading_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading (`with.code`)\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "See [ok](docs/other.md), [ok too](docs/other.md#a-heading-withcode), [dup](docs/other.md#twice-1),\n"
        "[gone](docs/missing.md), [bad anchor](docs/other.md#nowhere), [web](https://example.org/x.md),\n"
        "`[in code](docs/nope.md)` and ![img](docs/missing.svg).\n"
        "```\n[in a fence](docs/fenced.md)\n```\n")
    assert broken(doc, root=tmp_path) == [
        "README.md:2: docs/missing.md: no such file",
        "README.md:2: docs/other.md#nowhere: no heading #nowhere in docs/other.md",
        "README.md:3: docs/missing.svg: no such file",
    ]


def test_every_source_file_the_e1_walk_names_exists():
    """docs/architecture.md walks E1 through the code by file name: a move or split must update it."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    walk = text.split("## E1 from config key to packet", 1)[1]
    names = re.findall(r"`([\w./-]+\.(?:py|smk|yaml|j2|rst)|Snakefile)`", walk)
    assert len(names) >= 20, names
    missing = [n for n in names if not (REPO / n).exists() and not (REPO / "src" / "context_research" / n).exists()]
    assert missing == [], f"docs/architecture.md names files that are gone: {missing}"
