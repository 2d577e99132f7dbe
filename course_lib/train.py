"""Command line for long training runs with the course's own code.

    python -m course_lib.train translate --help   # encoder-decoder (notebook 07)
    python -m course_lib.train gpt --help         # GPT (notebook 08)
"""

from __future__ import annotations

import sys

TASKS = {
    "translate": "course_lib.translation_train",
    "gpt": "course_lib.gpt_train",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TASKS:
        print(__doc__.strip())
        print(f"\nerror: name a task first, one of: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(TASKS[argv[0]])
    return module.cli_main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
