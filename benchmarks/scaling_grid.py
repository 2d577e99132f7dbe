"""The IsoFLOP grid of notebook 11: character-level GPTs of several sizes, each trained at
several compute budgets C = 6ND with its own cosine schedule, and the validation loss at the end.

    python benchmarks/scaling_grid.py --record          # the grid (about 16 CPU-minutes on one core)
    python benchmarks/scaling_grid.py --quick           # a tiny dry run (seconds), nothing written

Every budget gets the model sizes around its best one (``GRID``), so that each IsoFLOP curve
has its minimum inside the sizes measured. The text is tiny Shakespeare
(``$COURSE_DATA_DIR/tinyshakespeare/input.txt``, else ``../shared/data`` beside the checkout),
else the course's generated corpus. Under ``--record`` every finished run is written at once to
``resources/results/scaling_grid.json``; a second run skips the runs already there, so the grid
can be resumed or extended (a results file made from other text or settings is an error).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from course_lib.scaling import IsoFLOPSpec, grid_text, plan_point, train_point  # noqa: E402
from course_lib.tokenizer import CharTokenizer  # noqa: E402
from course_lib.training.gpt import prepare_data  # noqa: E402

NAME = "scaling_grid"

# budget (FLOPs) -> the shapes (n_layers, d_model) trained at it. N of each shape on the
# 65 characters of tiny Shakespeare: (1,12) 2.7k, (1,16) 4.4k, (1,24) 8.8k, (2,24) 16k,
# (2,32) 28k, (2,40) 42k, (3,48) 88k.
GRID = {
    1e11: [(1, 12), (1, 16), (1, 24), (2, 24), (2, 32)],
    2e11: [(1, 12), (1, 16), (1, 24), (2, 24), (2, 32)],
    4e11: [(1, 16), (1, 24), (2, 24), (2, 32), (2, 40)],
    8e11: [(1, 24), (2, 24), (2, 32), (2, 40), (3, 48)],
    1.6e12: [(1, 24), (2, 24), (2, 32), (2, 40), (3, 48)],
}
SPEC = IsoFLOPSpec(lr=1e-2)
# --quick: two budgets x two tiny shapes on 20,000 characters, a few seconds in all
QUICK_GRID = {3e7: [(1, 4), (1, 8)], 6e7: [(1, 4), (1, 8)]}
QUICK_SPEC = IsoFLOPSpec(block_size=16, batch_size=8, lr=1e-2, eval_batches=2)


def point_key(point: dict) -> tuple:
    return (float(point["budget"]), int(point["n_layers"]), int(point["d_model"]))


def existing_points(folder: Path, name: str, source: str, spec: IsoFLOPSpec) -> list[dict]:
    """The runs already in ``<folder>/<name>.json``, if it was made from the same text and settings."""
    from course_lib.results import load

    if not (folder / f"{name}.json").is_file():
        return []
    figures = load(name, folder)["figures"]
    if figures.get("data") != source or figures.get("spec") != asdict(spec):
        raise ValueError(f"{name}.json holds runs on {figures.get('data')!r} with settings {figures.get('spec')}, "
                         f"not {source!r} with {asdict(spec)}; move it away to start a new grid.")
    return list(figures["points"])


def print_table(points: list[dict]) -> None:
    print("| budget C | layers | d_model | N | steps | tokens D | D / N | val loss | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in sorted(points, key=lambda p: (p["budget"], p["params"])):
        print(f"| {p['budget']:.1e} | {p['n_layers']} | {p['d_model']} | {p['params']:,} | {p['steps']:,} | "
              f"{p['tokens']:,} | {p['tokens'] / p['params']:,.0f} | {p['val_loss']:.4f} | {p['seconds']:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid on little text (a dry run)")
    parser.add_argument("--record", action="store_true", help=f"write resources/results/{NAME}.json as it goes")
    parser.add_argument("--folder", default=None, help="where --record writes (default: resources/results)")
    parser.add_argument("--budgets", type=float, nargs="+", default=None,
                        help="train only these budgets of the grid (several processes can share a grid)")
    args = parser.parse_args(argv)
    from course_lib.results import RESULTS, record

    grid, spec = (QUICK_GRID, QUICK_SPEC) if args.quick else (GRID, SPEC)
    name = f"{NAME}_quick" if args.quick else NAME
    folder = Path(args.folder) if args.folder else RESULTS
    if args.budgets is not None:
        unknown = sorted(set(args.budgets) - set(grid))
        if unknown:
            print(f"error: --budgets {unknown} are not budgets of the grid; choose from {sorted(grid)}", file=sys.stderr)
            return 2
        grid = {c: grid[c] for c in args.budgets}
    torch.set_num_threads(1)  # tiny models: one thread is the fastest, and bit-for-bit repeatable
    text, source = grid_text(20_000 if args.quick else None)
    tokenizer = CharTokenizer.from_text(text)
    data = prepare_data(text, tokenizer)
    done = existing_points(folder, name, source, spec) if args.record else []
    have = {point_key(p) for p in done}
    todo = [plan_point(c, shape, tokenizer.vocab_size, spec) for c in sorted(grid) for shape in grid[c]]
    todo = [p for p in todo if point_key(p) not in have]
    print(f"data: {source}; {len(todo)} runs to train, {len(done)} already recorded", flush=True)
    start = time.perf_counter()
    for i, point in enumerate(todo, 1):
        if args.record:  # with the runs other processes have recorded meanwhile
            done = existing_points(folder, name, source, spec)
            if point_key(point) in {point_key(p) for p in done}:
                continue
        cpu = time.process_time()
        result = {**train_point(point, data, spec, device="cpu"), "cpu_seconds": round(time.process_time() - cpu, 2)}
        if args.record:
            done = [p for p in existing_points(folder, name, source, spec) if point_key(p) != point_key(result)]
        done.append(result)
        if args.record:
            record(name, {"data": source, "spec": asdict(spec), "points": done,
                          "cpu_seconds": round(sum(p["cpu_seconds"] for p in done), 1),
                          "wall_seconds": round(sum(p["seconds"] for p in done), 1)},
                   source="benchmarks/scaling_grid.py", folder=folder)
        print(f"[{i}/{len(todo)}] C={point['budget']:.1e} N={point['params']:,} D={point['tokens']:,}: "
              f"val {result['val_loss']:.4f} ({result['seconds']:.0f} s)", flush=True)
    print(f"trained {len(todo)} runs in {time.perf_counter() - start:.0f} s\n")
    print_table(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
