"""The repository address lives in course_lib.REPO_URL; every copy (notebooks' first cells,
the README's Colab badges and install line) must agree, and set_repo_url rewrites them all."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import course_lib

ROOT = Path(__file__).resolve().parent.parent
REPO_LIKE = re.compile(r"(?:github\.com/|colab\.research\.google\.com/github/)([\w.-]+/[\w-]+(?:\.(?!git\b)[\w-]+)*)")


def referenced_repos(root: Path) -> dict[str, set[str]]:
    found = {}
    for path in [root / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]:
        found[path.name] = set(REPO_LIKE.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_copy_of_the_repository_address_agrees():
    slug = course_lib.REPO_URL.removeprefix("https://github.com/")
    found = referenced_repos(ROOT)
    assert slug in found["README.md"]
    notebooks = [name for name in found if name.endswith(".ipynb")]
    assert notebooks and all(found[name] == {slug} for name in notebooks), found
    # the README may link other projects (references), but never another copy of the course
    others = {r for r in found["README.md"] if r.split("/")[1] == slug.split("/")[1] and r != slug}
    assert not others


def test_set_repo_url_rewrites_every_copy(tmp_path):
    for rel in ("course_lib/__init__.py", "README.md", "scripts/set_repo_url.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("exports"))
    script = tmp_path / "scripts" / "set_repo_url.py"
    run = subprocess.run([sys.executable, str(script), "https://github.com/someone/course-fork.git"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = referenced_repos(tmp_path)
    assert all(found[n] == {"someone/course-fork"} for n in found if n.endswith(".ipynb"))
    assert "someone/course-fork" in found["README.md"]
    assert course_lib.REPO_URL.removeprefix("https://github.com/") not in found["README.md"]
    init = (tmp_path / "course_lib" / "__init__.py").read_text()
    assert 'REPO_URL = "https://github.com/someone/course-fork"' in init
    bad = subprocess.run([sys.executable, str(script), "git@github.com:x/y"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
