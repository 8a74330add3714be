"""Each "reference note N" cited in the code exists in docs/reference.md; no citation of the external spec is left."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "docs" / "reference.md"
SKIP = {".venv", ".git", "outputs", "node_modules"}
RANGE = r"\d+(?:\s*-\s*\d+)?"
CITATION = re.compile(rf"reference notes? ({RANGE}(?:(?:,\s*|\s+and\s+){RANGE})*)", re.IGNORECASE)
# "spec §8", "spec 9.1", "quirk 4", "quirks 22, 23", "spec quirk 10": citations of a document not in the repo
STALE = re.compile(r"spec\s*§|\bspec\s+\d|\bquirks?\s+\d|spec\s+quirk", re.IGNORECASE)


def python_files():
    for path in ROOT.rglob("*.py"):
        if not SKIP.intersection(path.relative_to(ROOT).parts) and path != Path(__file__).resolve():
            yield path


def cited_numbers(text):
    """Every N of "reference note N", "reference notes 5-8", "reference notes 20, 35-39 and 41" in text."""
    numbers = set()
    for match in CITATION.finditer(text):
        for lo, hi in re.findall(r"(\d+)(?:\s*-\s*(\d+))?", match.group(1)):
            numbers.update(range(int(lo), int(hi or lo) + 1))
    return numbers


def note_numbers():
    return [int(n) for n in re.findall(r"^#+ Reference note (\d+):", NOTES.read_text(), re.MULTILINE)]


def test_notes_are_numbered_one_to_n_in_order():
    numbers = note_numbers()
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_cited_note_exists():
    existing = set(note_numbers())
    missing = {}
    for path in python_files():
        absent = cited_numbers(path.read_text(encoding="utf-8")) - existing
        if absent:
            missing[str(path.relative_to(ROOT))] = sorted(absent)
    assert not missing, f"cited reference notes missing from docs/reference.md: {missing}"


def test_code_cites_reference_notes():
    assert sum(len(cited_numbers(p.read_text(encoding="utf-8"))) for p in python_files()) > 40


def test_no_citations_of_the_external_spec_remain():
    stale = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in python_files()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STALE.search(line)
    ]
    assert not stale, "\n".join(stale)


def test_citation_parser():
    assert cited_numbers("see reference notes 20, 35-37 and reference note 4") == {4, 20, 35, 36, 37}
    assert STALE.search("(spec §8.1)") and STALE.search("(quirk 27)") and STALE.search("spec 9.1")
    assert not STALE.search("melspec 9 frames") and not STALE.search("head_spec[1]")
