"""The chat model's pieces (notebook 14), each against an independent reference:

- the loss mask against a brute-force reading of the rendered conversation;
- SFT through ``fit`` against a hand-written step, and its loss against a per-token loop;
- the multiple-choice score against Hugging Face's GPT2LMHeadModel with the same weights;
- the DPO loss against TRL's DPOTrainer loss code, fed by Hugging Face's model;
- deliberately broken variants (user tokens in the mask, DPO without its reference) fail;
- the ``chat`` command: replies as a session does, and one ``error:`` line for bad input.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from course_lib import align
from course_lib.chat import ASSISTANT, END, USER, ChatSession, encode_chat, render
from course_lib.checkpoint import save_checkpoint
from course_lib.data import instructions as data
from course_lib.gpt import GPT, GPTConfig
from course_lib.multiple_choice import choice_logprobs
from course_lib.training.chat import make_tokenizer
from course_lib.training.loop import fit

TOK = make_tokenizer()


def tiny_gpt(seed: int = 0, **extra) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=160, n_layers=2, n_heads=2, d_model=32, **extra))


def conversations(n: int, seed: int = 0, turns: int = 2):
    rng = random.Random(seed)
    items = data.instructions(n * turns, seed)
    return [[m for it in items[k * turns:(k + 1) * turns]
             for m in ({"role": "user", "content": it.prompt},
                       {"role": "assistant", "content": data.reply(it, rng.random() < 0.5)})]
            for k in range(n)]


# ---- the template and the loss mask ------------------------------------------------------

def brute_force_mask(text: str) -> list[int]:
    """Read the rendered text left to right, one token at a time: a token is learned when the
    last role token seen is the assistant's and the token is not a role token itself."""
    mask, role, i = [], None, 0
    while i < len(text):
        special = next((s for s in (USER, ASSISTANT, END) if text.startswith(s, i)), None)
        piece = special or text[i]
        if piece in (USER, ASSISTANT):
            role = piece
            mask.append(0)
        else:
            mask.append(1 if role == ASSISTANT else 0)
        if piece == END:
            role = None
        i += len(piece)
    return mask


def mask_with_user_tokens(tokenizer, messages):
    """A broken variant: every message's tokens learned."""
    ids, mask = encode_chat(tokenizer, messages)
    return ids, [0 if i in (tokenizer.special_tokens[USER], tokenizer.special_tokens[ASSISTANT]) else 1 for i in ids]


@pytest.mark.parametrize("variant, should_match", [(encode_chat, True), (mask_with_user_tokens, False)])
def test_mask_matches_brute_force(variant, should_match):
    for conv in conversations(20, turns=3):
        text = render(conv)
        ids, mask = variant(TOK, conv)
        assert ids == TOK.encode(text, allowed_special="all")
        assert (mask == brute_force_mask(text)) is should_match


def test_template_text():
    conv = [{"role": "user", "content": "add: 1+2"}, {"role": "assistant", "content": "3"}]
    assert render(conv) == "<|user|>add: 1+2<|end|><|assistant|>3<|end|>"
    assert render(conv[:1], add_generation_prompt=True) == "<|user|>add: 1+2<|end|><|assistant|>"
    for bad in ([{"role": "system", "content": "x"}], [{"role": "user", "content": "a<|end|>"}], "hi"):
        with pytest.raises(ValueError, match="message"):
            render(bad)


# ---- SFT ---------------------------------------------------------------------------------------

def test_sft_loss_is_the_mean_over_reply_tokens():
    model = tiny_gpt()
    convs = conversations(4)
    ids, targets = align.sft_batch(TOK, convs)
    total, count = 0.0, 0
    for conv in convs:  # per-token loop, one conversation at a time, no padding
        row, mask = encode_chat(TOK, conv)
        logits = model(torch.tensor([row]))[0][0]
        for t in range(1, len(row)):
            if mask[t]:
                total += -F.log_softmax(logits[t - 1], -1)[row[t]].item()
                count += 1
    assert align.sft_loss(model, (ids, targets)).item() == pytest.approx(total / count, rel=1e-5)


def test_sft_through_fit_equals_a_hand_written_step():
    model, hand = tiny_gpt(), tiny_gpt()
    batch = align.sft_batch(TOK, conversations(6))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    state = fit(model, opt, lambda i: batch, align.sft_loss, steps=2, grad_clip=1.0, progress=False)
    hand_opt = torch.optim.AdamW(hand.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):
        ids, targets = batch
        _, loss = hand(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hand.parameters(), 1.0)
        hand_opt.step()
        hand_opt.zero_grad()
        losses.append(round(loss.item(), 6))
    assert [v for _, v in state["train_losses"]] == losses
    for a, b in zip(model.parameters(), hand.parameters(), strict=True):
        assert torch.equal(a, b)


# ---- log-likelihood scoring against Hugging Face --------------------------------------------

def hf_twin(model: GPT):
    """Hugging Face's GPT-2 with the weights of ``model`` (built by HF, loaded into ours)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=model.config.vocab_size, n_positions=model.config.block_size,
                                  n_embd=model.config.d_model, n_layer=model.config.n_layers,
                                  n_head=model.config.n_heads, activation_function="gelu_new",
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ours = GPT.from_hf(cfg.to_dict(), hf.state_dict()).eval()
    return hf, ours


def test_choice_scores_match_hugging_face_sum_of_logprobs():
    hf, ours = hf_twin(tiny_gpt(activation="gelu_tanh"))
    item = data.instructions(1, seed=5, tasks=("reverse",))[0]
    options, _ = data.choices(item)
    prompt = TOK.encode(render([{"role": "user", "content": item.prompt}], True), allowed_special="all")
    scores = choice_logprobs(ours, prompt, [TOK.encode(o) for o in options])
    for option, score in zip(options, scores, strict=True):
        row = torch.tensor([prompt + TOK.encode(option)])
        logp = F.log_softmax(hf(row).logits[0].double(), -1)
        expected = sum(logp[t - 1, row[0, t]].item() for t in range(len(prompt), row.shape[1]))
        assert score.item() == pytest.approx(expected, abs=1e-4)


# ---- DPO against TRL -----------------------------------------------------------------------------

def trl_dpo_loss(hf, ids: torch.Tensor, mask: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's DPOTrainer loss code (sigmoid DPO) on a batch ``(ids (B, 2, T), mask, ref (B, 2))``;
    per-token log-probabilities from Hugging Face's model and TRL's own log-softmax."""
    trl = pytest.importorskip("trl")
    from trl.trainer.utils import selective_log_softmax

    chosen_first = lambda t: torch.cat([t[:, 0], t[:, 1]])  # noqa: E731  TRL's layout: chosen rows, then rejected
    input_ids, completion_mask = chosen_first(ids), chosen_first(mask)

    def model(input_ids, labels, **_):
        logits = hf(input_ids=input_ids).logits[:, :-1]
        per_token = selective_log_softmax(logits, input_ids[:, 1:]) * (labels[:, 1:] != -100)
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    model.training = True
    trainer = trl.DPOTrainer.__new__(trl.DPOTrainer)
    identity = lambda t: t  # noqa: E731
    trainer.__dict__.update(
        model=model, beta=beta, loss_types=["sigmoid"], loss_weights=[1.0], f_divergence_type="reverse_kl",
        ld_alpha=None, precompute_ref_logps=True, aux_loss_enabled=False, use_weighting=False,
        label_smoothing=0.0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=identity, gather=identity))
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "completion_mask": completion_mask,
              "ref_chosen_logps": ref_logps[:, 0], "ref_rejected_logps": ref_logps[:, 1]}
    return trainer._compute_loss(model, inputs, return_outputs=False)


def dpo_without_reference(model, batch, beta):
    """A broken variant: the reference's log-probabilities left out."""
    ids, mask, ref = batch
    return align.dpo_batch_loss(model, (ids, mask, torch.zeros_like(ref)), beta)


@pytest.mark.parametrize("variant, should_match", [(align.dpo_batch_loss, True), (dpo_without_reference, False)])
def test_dpo_loss_matches_trl(variant, should_match):
    hf, ours = hf_twin(tiny_gpt(activation="gelu_tanh"))
    items = data.instructions(6, seed=2)
    ids, mask = align.pair_tensors(TOK, data.preference_pairs(items))
    ref_logps = torch.tensor([[-12.5, -30.0], [-7.0, -41.0], [-9.0, -20.0], [-3.0, -33.0], [-8.0, -29.0],
                              [-6.5, -25.0]])
    beta = 0.1
    expected = trl_dpo_loss(hf, ids, mask, ref_logps, beta)
    got = variant(ours, (ids, mask, ref_logps), beta)
    assert torch.isclose(got, expected.to(got.dtype), atol=1e-5).item() is should_match


def test_dpo_reward_margin_and_loss_at_the_start():
    """Policy = reference: every reward is 0 and the loss is log 2."""
    model = tiny_gpt()
    ids, mask = align.pair_tensors(TOK, data.preference_pairs(data.instructions(4)))
    ref = align.pair_logprobs(model, ids, mask)
    assert align.dpo_batch_loss(model, (ids, mask, ref)).item() == pytest.approx(0.693147, abs=1e-5)
    assert align.rewards(model, ids, mask, ref).abs().max().item() < 1e-5


# ---- the generated data --------------------------------------------------------------------------

def test_instructions_answers_and_held_out_split():
    train, test = data.split(400, 50, seed=1)
    assert not {t.prompt for t in test} & {t.prompt for t in train}
    for it in train[:40]:
        body = it.prompt.split(": ", 1)[1]
        words = body.split()
        if it.task == "add":
            a, b = body.split("+")
            expected = str(int(a) + int(b))
        else:
            expected = {"reverse": " ".join(words[::-1]), "sort": " ".join(sorted(words)),
                        "count": str(len(words))}[it.task]
        assert it.answer == expected
    options, right = data.choices(test[0], n=4)
    assert len(set(options)) == 4 and options[right] == test[0].answer


@pytest.mark.parametrize("call, match", [
    (lambda: data.split(0, 5), "n_train=0"), (lambda: data.instructions(-1), "n=-1"),
    (lambda: data.conversations([], p_verbose=1.5), "p_verbose=1.5"),
    (lambda: data.instructions(3, tasks=("fly",)), "tasks"), (lambda: data.choices(data.instructions(1)[0], n=1), "n=1"),
])
def test_generators_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- the chat session and the command -------------------------------------------------------

def test_session_streams_the_greedy_reply_and_keeps_the_conversation():
    from course_lib.generate import generate

    model = tiny_gpt()
    session = ChatSession(model, TOK, max_new_tokens=10)
    pieces = list(session.send("add: 1+2"))
    prompt = TOK.encode(render([{"role": "user", "content": "add: 1+2"}], True), allowed_special="all")
    out = generate(model, torch.tensor([prompt]), 10, temperature=0)[0, len(prompt):].tolist()
    stops = {TOK.special_tokens[s] for s in (USER, ASSISTANT, END)}
    expected = out[:next((k for k, t in enumerate(out) if t in stops), len(out))]
    assert "".join(pieces) == TOK.decode(expected)
    session.reply("count: cat")
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
    with pytest.raises(ValueError, match="cannot read"):
        session.reply("Hello")


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("chat_run")
    model = tiny_gpt()
    save_checkpoint(run / "checkpoint.safetensors", model, model.config.to_dict())
    TOK.save(run / "tokenizer.json")
    return run, model


def course(*args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "course_lib", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_chat_command_replies_like_a_session(chat_run):
    run, model = chat_run
    out = course("chat", run, "--max-new-tokens", 8, "--device", "cpu", stdin="add: 1+2\n/reset\ncount: cat\n")
    assert out.returncode == 0, out.stderr
    session = ChatSession(model, TOK, max_new_tokens=8)
    first = session.reply("add: 1+2")
    session.reset()
    assert out.stdout.splitlines() == [f"model> {first}", f"model> {session.reply('count: cat')}"]


@pytest.mark.parametrize("args, match", [
    (["chat", "{tmp}/missing"], "no checkpoint"),
    (["chat", "{run}", "--temperature", "-1"], "temperature"),
    (["chat", "{run}", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["chat", "{run}", "--top-k", "0"], "top_k"),
    (["chat", "{plain}"], "special token"),
])
def test_chat_command_errors(chat_run, tmp_path, args, match):
    from course_lib.tokenizer import CharTokenizer

    run, model = chat_run
    plain = tmp_path / "plain"
    plain.mkdir()
    save_checkpoint(plain / "checkpoint.safetensors", model, model.config.to_dict())
    CharTokenizer.from_text("abc" * 20).save(plain / "tokenizer.json")
    out = course(*[a.format(tmp=tmp_path, run=run, plain=plain) for a in args], stdin="hi\n")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], out.stderr


def test_train_chat_command_rejects_bad_settings(tmp_path):
    (tmp_path / "file").write_text("")
    for args, match in ((["--out", tmp_path / "file"], "is a file"),
                        (["--base-steps", "-1", "--out", tmp_path / "x"], "base_steps=-1")):
        out = course("train", "chat", *args)
        assert out.returncode == 2 and match in out.stderr, out.stderr


def test_session_keeps_the_latest_turns_that_fit_the_context():
    model = tiny_gpt()  # a context of 160 tokens
    session = ChatSession(model, TOK, max_new_tokens=20)
    for k in range(12):
        session.reply(f"add: {k}+1")
    assert len(session.messages) == 24
    session.messages.append({"role": "user", "content": "count: cat dog"})
    ids = session._context()
    assert len(ids) + 20 <= 160 and len(ids) > 160 - 20 - 30  # dropped whole turns, kept as many as fit
    assert TOK.decode(ids).endswith("<|user|>count: cat dog<|end|><|assistant|>")
    session.reset()
    long = " ".join(["cat"] * 36)  # 143 characters: a reply has 160 - 147 = 13 tokens of room
    assert len(session.reply("count: " + long)) <= 13
    with pytest.raises(ValueError, match="too long"):
        session.reply("count: " + " ".join(["cat"] * 40))
