"""References in the code and the docs resolve inside the repository.

The method is described in docs/method.md; code and docs cite its numbered sections as
"docs/method.md §N". Nothing may cite a document that is not shipped, name a path on a build
machine, or point at a section or a file that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOC = ROOT / "docs" / "method.md"
SCANNED = ("src", "tests", "docs", "benchmarks", "README.md")
THIS_FILE = Path(__file__).resolve()

# A specification that lives outside the repository, in any of the ways it used to be cited.
OUTSIDE_SPEC = re.compile(r"METHOD\.md|\bMETHOD\b")
# An absolute path on the machine the project was built on.
BUILD_MACHINE_PATH = re.compile(r"(?<![\w.~-])/work/")
# "docs/method.md §6", "docs/method.md §4 and §5", "docs/method.md §2.3, §2.4".
SECTION_REFERENCE = re.compile(r"docs/method\.md((?:(?:\s*,\s*|\s+and\s+|\s+)§\d+(?:\.\d+)*)+)")
SECTION_NUMBER = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING_NUMBER = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def text_files() -> list[Path]:
    """Every text file under the scanned folders (images and other binaries skipped)."""
    paths = []
    for name in SCANNED:
        top = ROOT / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in candidates:
            # This file names the patterns it searches for.
            if not path.is_file() or "__pycache__" in path.parts or path == THIS_FILE:
                continue
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            paths.append(path)
    return paths


def occurrences(pattern: re.Pattern) -> list[str]:
    found = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def method_sections() -> set[str]:
    return set(HEADING_NUMBER.findall(METHOD_DOC.read_text(encoding="utf-8")))


def test_method_doc_has_numbered_sections():
    sections = method_sections()
    assert {str(n) for n in range(1, 10)} <= sections, sorted(sections)


def test_no_reference_to_an_unshipped_specification():
    assert occurrences(OUTSIDE_SPEC) == []


def test_no_absolute_build_machine_path():
    assert occurrences(BUILD_MACHINE_PATH) == []


def test_section_references_point_to_existing_sections():
    sections = method_sections()
    cited = {}
    for path in text_files():
        text = path.read_text(encoding="utf-8")
        for match in SECTION_REFERENCE.finditer(text):
            for number in SECTION_NUMBER.findall(match.group(1)):
                cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    assert cited, "nothing cites docs/method.md"
    missing = {number: files for number, files in cited.items() if number not in sections}
    assert missing == {}


def test_method_doc_internal_references_resolve():
    text = METHOD_DOC.read_text(encoding="utf-8")
    cited = set(SECTION_NUMBER.findall(text))
    assert cited - method_sections() == set()


@pytest.mark.parametrize(
    "name", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_markdown_links_resolve(name):
    """Relative links name existing files; links into docs/method.md name existing anchors."""
    path = ROOT / name if name == "README.md" else ROOT / "docs" / name
    anchors = set(ANCHOR.findall(METHOD_DOC.read_text(encoding="utf-8")))
    broken = []
    for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = linked == METHOD_DOC and fragment and fragment not in anchors
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert broken == []
