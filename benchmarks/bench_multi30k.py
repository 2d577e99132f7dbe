"""Multi30k en->de on the CPU: train the recipe for a fixed wall-clock budget, then
validation BLEU (sacrebleu, against the raw references) with greedy search and beam 4,
sentences per second for training and translation, and BLEU against minutes.

    nice python benchmarks/bench_multi30k.py                       # 25 minutes, 2 threads
    python benchmarks/bench_multi30k.py --minutes 3 --curve-every 1  # a quick look

The recipe is ``resources/recipes/multi30k_cpu.json`` (the same file as
``python -m course_lib train translate --config resources/recipes/multi30k_cpu.json``).
Every ``--curve-every`` minutes of training a copy of the weights is kept; after training
each copy is translated on the first ``--curve-n`` validation sentences, so the curve costs
no training time. The final model (the average of the last checkpoints, as the recipe
says) is evaluated on the whole validation set. Tokenizer training (about 10 s) is timed
apart. The training clock counts training steps only (evaluations excluded); CPU seconds
are printed too, since on a shared machine the wall clock measures the neighbours as well.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sacrebleu  # noqa: E402
import torch  # noqa: E402

from course_lib.data import load_pairs  # noqa: E402
from course_lib.decoding import beam_search, translate  # noqa: E402
from course_lib.tokenizer import special_ids  # noqa: E402
from course_lib.training.translation import (  # noqa: E402
    PRESETS,
    TranslationTrainConfig,
    build_tokenizer,
    load_config,
    train,
)
from course_lib.transformer import Transformer, TransformerConfig  # noqa: E402

RECIPE = ROOT / "resources" / "recipes" / "multi30k_cpu.json"


def bleu(model, tokenizer, pairs, beam: int, alpha: float) -> tuple[float, float, list[str]]:
    """(BLEU against the raw references, sentences per second, hypotheses)."""
    t = time.perf_counter()
    hyps = translate(model, tokenizer, [s for s, _ in pairs], beam_size=beam, alpha=alpha, warn=lambda m: None)
    secs = time.perf_counter() - t
    return sacrebleu.corpus_bleu(hyps, [[r for _, r in pairs]]).score, len(pairs) / secs, hyps


def one_at_a_time(model, tokenizer, pairs, beam: int, alpha: float) -> tuple[list[list[int]], float]:
    """The beam search of before: one sentence at a time (ids, sentences per second)."""
    ids = special_ids(tokenizer)
    t, out = time.perf_counter(), []
    for s, _ in pairs:
        src = torch.tensor([tokenizer.encode(s)[: model.config.max_len - 1] + [ids["<eos>"]]])
        limit = min(model.config.max_len - 1, src.shape[1] + 50)
        out.append(beam_search(model, src, ids["<bos>"], ids["<eos>"], beam, limit, alpha))
    return out, len(pairs) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(RECIPE))
    p.add_argument("--data", default=None, help="prefix of train.en/.de (default: the recipe's, or "
                   "$COURSE_DATA_DIR/multi30k/train)")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget (wall clock)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--curve-every", type=float, default=2.5, help="minutes between BLEU-curve snapshots")
    p.add_argument("--curve-n", type=int, default=300, help="validation sentences per curve point")
    p.add_argument("--compare-n", type=int, default=1000,
                   help="sentences translated by the one-at-a-time beam search too (0: skip)")
    p.add_argument("--out", default=None, help="run folder (default: none; results JSON beside it)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="override recipe settings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    raw = json.loads(Path(args.config).read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        raw[key] = json.loads(value)
    preset = raw.get("preset", "small")
    train_kw, model_kw = load_config(raw)
    data = args.data or train_kw.get("data")
    if not data or not Path(str(data) + ".en.gz").exists() and not Path(str(data) + ".en").exists():
        data = str(Path(os.environ.get("COURSE_DATA_DIR", ROOT.parent / "shared" / "data")) / "multi30k" / "train")
    if not Path(data + ".en.gz").exists() and not Path(data + ".en").exists():
        raise SystemExit(f"error: no Multi30k at {data}.en[.gz]; pass --data PREFIX or set COURSE_DATA_DIR")
    train_kw.update(data=data, max_minutes=args.minutes, out=args.out, progress=False)
    cfg = TranslationTrainConfig.from_dict(train_kw)
    train_pairs = load_pairs(data, "train", cfg.n_train)
    valid_pairs = load_pairs(data, "val", cfg.n_valid)

    t = time.perf_counter()
    tok = build_tokenizer(train_pairs, cfg.tokenizer, cfg.bpe_vocab_size)
    tok_secs = time.perf_counter() - t
    mcfg = TransformerConfig.from_dict({**PRESETS[preset], **model_kw, "src_vocab_size": tok.vocab_size,
                                        "tgt_vocab_size": tok.vocab_size, "pad_id": tok.special_tokens["<pad>"]})
    model = Transformer(mcfg)
    print(f"recipe {args.config} (preset {preset}); {model.num_parameters():,} parameters, vocabulary "
          f"{tok.vocab_size}, {len(train_pairs):,} training pairs; {args.minutes:g} min on "
          f"{args.threads} thread(s), load average now {os.getloadavg()[0]:.1f}", flush=True)

    snapshots = []
    steps_per_epoch = -(-len(train_pairs) // cfg.batch_size)

    def on_step(state, m):
        due = (len(snapshots) + 1) * 60 * args.curve_every
        if state["train_seconds"] >= due:
            snapshots.append({"minutes": state["train_seconds"] / 60, "step": state["step"],
                              "epoch": state["step"] / steps_per_epoch,
                              "weights": {k: v.detach().clone() for k, v in m.state_dict().items()}})
            print(f"  {state['train_seconds'] / 60:5.1f} min: step {state['step']}, "
                  f"loss {state['train_losses'][-1][1]:.3f}", flush=True)
        return False

    cpu0, wall0 = time.process_time(), time.perf_counter()
    state = train(model, tok, train_pairs, valid_pairs, cfg, on_step=on_step)
    cpu_train, wall_all = time.process_time() - cpu0, time.perf_counter() - wall0
    train_secs = state["train_seconds"]
    print(f"trained {state['step']} steps ({state['step'] / state['steps_per_epoch']:.2f} epochs) in "
          f"{train_secs / 60:.1f} min of training ({wall_all / 60:.1f} min with evaluations); "
          f"{cpu_train / 60:.1f} CPU-minutes; validation loss {state['evals'][-1]['val']:.3f}; "
          f"averaged {state.get('averaged_steps')}", flush=True)

    model.eval()
    greedy_bleu, greedy_sps, greedy_hyps = bleu(model, tok, valid_pairs, 1, cfg.eval_alpha)
    print(f"final model, greedy: BLEU {greedy_bleu:.2f} on {len(valid_pairs)} sentences, {greedy_sps:.1f} sentences/s",
          flush=True)
    beam_bleu, beam_sps, beam_hyps = bleu(model, tok, valid_pairs, 4, cfg.eval_alpha)
    print(f"final model, beam 4: BLEU {beam_bleu:.2f}, {beam_sps:.1f} sentences/s", flush=True)
    curve_pairs = valid_pairs[: args.curve_n]
    curve = []
    final_weights = {k: v.clone() for k, v in model.state_dict().items()}
    for snap in snapshots:
        model.load_state_dict(snap["weights"])
        g = bleu(model, tok, curve_pairs, 1, cfg.eval_alpha)[0]
        b = bleu(model, tok, curve_pairs, 4, cfg.eval_alpha)[0]
        curve.append({k: snap[k] for k in ("minutes", "step", "epoch")} | {"greedy": g, "beam4": b})
        print(f"  curve: {snap['minutes']:.1f} min, step {snap['step']}: greedy {g:.1f}, beam 4 {b:.1f}", flush=True)
    model.load_state_dict(final_weights)
    g_curve = bleu(model, tok, curve_pairs, 1, cfg.eval_alpha)[0]
    b_curve = bleu(model, tok, curve_pairs, 4, cfg.eval_alpha)[0]
    curve.append({"minutes": train_secs / 60, "step": state["step"], "epoch": state["step"] / state["steps_per_epoch"],
                  "greedy": g_curve, "beam4": b_curve, "final": True})

    rows = [
        ("model", f"{preset}: d_model {mcfg.d_model}, {mcfg.n_layers}+{mcfg.decoder_layers} layers, d_ff {mcfg.d_ff}, "
                  f"{model.num_parameters():,} parameters (embeddings shared: {mcfg.share_embeddings})"),
        ("training", f"{state['step']} steps of {cfg.batch_size} pairs = {state['step'] / state['steps_per_epoch']:.2f} "
                     f"epochs in {train_secs / 60:.1f} min ({cpu_train / 60:.1f} CPU-min), {args.threads} threads"),
        ("training speed", f"{state['step'] * cfg.batch_size / train_secs:.1f} sentence pairs/s"),
        ("tokenizer", f"joint byte-level BPE {tok.vocab_size} tokens, trained in {tok_secs:.1f} s"),
        ("validation loss", f"{state['evals'][-1]['val']:.3f} nats/token"),
        (f"BLEU greedy ({len(valid_pairs)} sentences)", f"{greedy_bleu:.2f}"),
        (f"BLEU beam 4, alpha {cfg.eval_alpha}", f"**{beam_bleu:.2f}**"),
        ("translation speed greedy", f"{greedy_sps:.1f} sentences/s"),
        ("translation speed beam 4 (batched)", f"{beam_sps:.1f} sentences/s"),
    ]
    compare = None
    if args.compare_n:
        part = valid_pairs[: args.compare_n]
        t = time.perf_counter()
        batched = translate(model, tok, [s for s, _ in part], beam_size=4, alpha=cfg.eval_alpha, warn=lambda m: None)
        batched_sps = len(part) / (time.perf_counter() - t)
        ids, single_sps = one_at_a_time(model, tok, part, 4, cfg.eval_alpha)
        eos = tok.special_tokens["<eos>"]
        same = sum(tok.decode([i for i in o if i != eos]) == h for o, h in zip(ids, batched))
        compare = {"n": len(part), "batched_sps": batched_sps, "single_sps": single_sps, "same": same}
        rows.append((f"beam 4, {len(part)} sentences: one at a time vs batched",
                     f"{len(part) / single_sps:.1f} s vs {len(part) / batched_sps:.1f} s: "
                     f"{batched_sps / single_sps:.1f}x; identical output for {same}/{len(part)}"))
    print()
    print(f"Multi30k en->de validation, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} at the end)")
    print("| what | result |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print()
    print(f"BLEU against minutes of training (first {len(curve_pairs)} validation sentences; the last row is the "
          "final, averaged model)")
    print("| minutes | step | epochs | greedy BLEU | beam 4 BLEU |")
    print("|---|---|---|---|---|")
    for c in curve:
        print(f"| {c['minutes']:.1f}{' (final)' if c.get('final') else ''} | {c['step']} | {c['epoch']:.2f} | "
              f"{c['greedy']:.1f} | {c['beam4']:.1f} |")
    print()
    for (src, ref), hyp in list(zip(valid_pairs, beam_hyps))[:5]:
        print(f"  {src}\n    -> {hyp}\n    ref {ref}")
    result = {"rows": rows, "curve": curve, "compare": compare, "greedy_bleu": greedy_bleu, "beam_bleu": beam_bleu,
              "train_seconds": train_secs, "cpu_seconds": cpu_train, "steps": state["step"],
              "settings": {**train_kw, "preset": preset}}
    if args.out:
        Path(args.out, "bench_multi30k.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
