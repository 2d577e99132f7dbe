"""The README and docs/ say only what the project's own files show.

- Every figure quoted with a results marker (``0.41<!-- bench_bpe:incremental_s -->``) equals
  its results file under resources/results/ at the precision shown.
- The README stays short (about 10 KB) and links every page of docs/.
- The layout page names every module of course_lib and every notebook, and nothing that does
  not exist.
- Every picture of the README is a plot a notebook saves, copied by scripts/update_figures.py.
- Every local link of the README and docs points at a file that exists.
"""

from __future__ import annotations

import json
import pkgutil
import re
from pathlib import Path

import pytest

import course_lib
from course_lib import results

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_marked_figure_equals_its_results_file(page):
    assert results.check_text(text(page)) == []


# a comment that starts like a marker (``<!-- name:``): the marker pattern must read all of it
MARKER_LIKE = re.compile(r"<!--\s*[\w-]+:")


def markers_unread(page_text: str) -> int:
    """How many marker-like comments the marker pattern does not read (and so never checks)."""
    return len(MARKER_LIKE.findall(page_text)) - len(results.MARKER.findall(page_text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_marker_is_read(page):
    """A key with spaces or ``|`` (which also splits a table's cell) is never checked."""
    assert markers_unread(text(page)) == 0


def test_an_unreadable_marker_is_caught():
    assert markers_unread("0.95<!-- nb10_small:rouge.lead-12 | shifted.rougeL -->") == 1
    assert markers_unread("0.95<!-- nb10_small:rouge.lead_12_shifted.rougeL -->") == 0


def test_slug_makes_keys_that_a_marker_reads():
    assert results.slug("gpt2-124m", "T4") == "gpt2_124m_t4"
    assert results.slug("Encoder-decoder (trained)", "same kind") == "encoder_decoder_trained_same_kind"
    label = "int4, groups of 16 | shifted"
    assert markers_unread(f"0.95<!-- nb12_small:val_by_format.{results.slug(label)} -->") == 0
    assert markers_unread(f"0.95<!-- nb12_small:val_by_format.{label} -->") == 1  # the raw label is not


def test_the_marker_check_catches_a_wrong_figure(tmp_path):
    results.record("example", {"bleu": 34.8123, "tokens": 1234567}, source="tests", folder=tmp_path, device="cpu")
    good = "BLEU **34.8**<!-- example:bleu --> and 1,234,567 tokens<!-- example:tokens -->"
    assert results.check_text(good, tmp_path) == []
    for bad in ("BLEU 34.9<!-- example:bleu -->", "BLEU 34.82<!-- example:bleu -->", "34<!-- example:bleu -->",
                "1,234,568<!-- example:tokens -->", "34.8<!-- example:nope -->", "34.8<!-- missing:bleu -->"):
        assert results.check_text(bad, tmp_path), bad


def test_every_results_file_says_where_and_when_it_was_measured():
    files = sorted((ROOT / "resources" / "results").glob("*.json"))
    assert files
    for path in files:
        body = json.loads(text(path))
        assert {"name", "source", "device", "torch", "date", "figures"} <= set(body), path.name
        assert body["name"] == path.stem and (ROOT / body["source"].split()[0]).exists(), path.name


def test_the_readme_is_short_and_links_every_doc():
    readme = text(ROOT / "README.md")
    assert len(readme.encode()) <= 10_500
    linked = set(LINK.findall(readme))
    assert {f"docs/{p.name}" for p in PAGES[1:]} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_local_link_exists(page):
    for target in LINK.findall(text(page)):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_layout_names_every_module_and_notebook_and_nothing_else():
    layout = text(ROOT / "docs/layout.md")
    modules = {m.name.removeprefix("course_lib.") for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.")}
    modules = {m for m in modules if not m.endswith("__main__") and not m.startswith("solutions.nb")}
    named = set()
    for m in sorted(modules):
        leaf = m.split(".")[-1]
        shown = f"{leaf}/" if (ROOT / "course_lib" / m.replace(".", "/")).is_dir() else f"{leaf}.py"
        assert shown in layout, f"docs/layout.md does not name course_lib's {m} ({shown})"
        named.add(shown)
    for listed in re.findall(r"\b([a-z_0-9]+\.py)\b", layout):
        assert listed in named or list(ROOT.glob(f"*/{listed}")) or list(ROOT.glob(f"*/*/{listed}")), \
            f"docs/layout.md names {listed}, which does not exist"
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        assert nb in layout, f"docs/layout.md does not name notebook {nb}"
    for listed in re.findall(r"\b(\d\d_[a-z_]+)\b", layout):
        assert listed in notebooks, f"docs/layout.md names notebook {listed}, which does not exist"


def test_every_readme_picture_is_a_plot_its_notebook_saves():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text(ROOT / "README.md"))
    assert pictures
    for pic in pictures:
        if "://" in pic:
            continue
        m = re.fullmatch(r"resources/figures/(\d\d_[a-z_]+)/([\w-]+)\.png", pic)
        assert m, f"README picture {pic} is not under resources/figures/<notebook>/"
        source = text(ROOT / "notebooks" / f"{m[1]}.ipynb")
        assert re.search(rf'save_figure\([^)]*\\"{m[2]}\\"', source) or f'\\"{m[2]}\\"' in source, \
            f"notebook {m[1]} saves no plot named {m[2]}"
        assert (ROOT / pic).is_file()


def test_a_run_outside_run_notebooks_inplace_leaves_the_quoted_figures_alone(tmp_path, monkeypatch):
    """The browser test, nbval and a learner run the notebooks too, some shortened: only
    ``run_notebooks.py --inplace`` (COURSE_RECORD=1) writes resources/results/."""
    monkeypatch.delenv("COURSE_RECORD", raising=False)
    monkeypatch.setenv("COURSE_EXPORT_DIR", str(tmp_path))
    path = results.record("probe", {"a": 1}, source="tests")
    assert path == tmp_path / "results" / "probe.json" and not (results.RESULTS / "probe.json").exists()
    monkeypatch.setenv("COURSE_RECORD", "1")
    assert results._default_folder() == results.RESULTS
