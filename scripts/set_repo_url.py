"""Point the course at another repository (a fork): one command rewrites every copy.

    python scripts/set_repo_url.py https://github.com/you/course

The address lives in ``course_lib.REPO_URL`` (course_lib/__init__.py). The notebooks'
first cells (which run in Colab before course_lib is installed, so cannot import it) and
the README's Colab badges hold copies; this script rewrites them all, and
``tests/test_repo_url.py`` fails whenever a copy differs from ``course_lib.REPO_URL``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "course_lib" / "__init__.py"
URL_LINE = re.compile(r'^REPO_URL = "(https://github\.com/([\w.-]+)/([\w.-]+))"$', re.MULTILINE)
GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+)$")


def current_url(root: Path = ROOT) -> str:
    found = URL_LINE.search((root / "course_lib" / "__init__.py").read_text(encoding="utf-8"))
    if not found:
        raise SystemExit("error: course_lib/__init__.py has no line REPO_URL = \"https://github.com/OWNER/NAME\"")
    return found.group(1)


def files_with_copies(root: Path = ROOT) -> list[Path]:
    return [root / "course_lib" / "__init__.py", root / "README.md",
            *sorted((root / "notebooks").glob("*.ipynb"))]


def rewrite(text: str, old: str, new: str) -> str:
    old_slug, new_slug = old.removeprefix("https://github.com/"), new.removeprefix("https://github.com/")
    text = text.replace(old, new)
    # Colab's address for a notebook on GitHub: colab.research.google.com/github/OWNER/NAME/...
    return text.replace(f"colab.research.google.com/github/{old_slug}/",
                        f"colab.research.google.com/github/{new_slug}/")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="https://github.com/OWNER/NAME (no trailing slash, no .git)")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    new = args.url.strip().removesuffix("/").removesuffix(".git")
    if not GITHUB.match(new):
        print(f"error: {args.url!r} is not https://github.com/OWNER/NAME", file=sys.stderr)
        return 2
    old = current_url(args.root)
    changed = 0
    for path in files_with_copies(args.root):
        text = path.read_text(encoding="utf-8")
        updated = rewrite(text, old, new)
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed += 1
    print(f"{old} -> {new}: {changed} files rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
