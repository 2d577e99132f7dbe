"""A chat template and a chat session: how a model that continues text becomes one you talk to.

A conversation is a list of messages ``{"role": "user" | "assistant", "content": str}``. The
template writes each message as its role's special token, the content and an end token::

    <|user|>reverse: cat dog<|end|><|assistant|>dog cat<|end|>

- ``render(messages, add_generation_prompt)``: the conversation as text; with
  ``add_generation_prompt`` it ends with ``<|assistant|>``, where the model's reply begins.
- ``encode_chat(tokenizer, messages)``: token ids and the loss mask, 1 on the tokens the
  model learns to produce (each assistant reply and the end token after it), 0 elsewhere.
- ``ChatSession``: keeps the conversation, applies the template and streams the reply token
  by token until the end token (``python -m course_lib chat RUN``, the notebook's chat box).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (USER, ASSISTANT, END)
ROLE_TOKENS = {"user": USER, "assistant": ASSISTANT}


def check_messages(messages) -> None:
    """A clear error for anything that is not a list of role/content messages."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLE_TOKENS or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} is {m!r}; each message is {{'role': 'user' or 'assistant', "
                             "'content': text}.")
        if any(s in m["content"] for s in SPECIAL_TOKENS):
            raise ValueError(f"message {i} contains a special token of the template {SPECIAL_TOKENS}; "
                             "remove it from the text.")


def render(messages, add_generation_prompt: bool = False) -> str:
    """The conversation as the model reads it (special tokens written out)."""
    check_messages(messages)
    text = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in messages)
    return text + ASSISTANT if add_generation_prompt else text


def check_chat_tokenizer(tokenizer) -> None:
    missing = [s for s in SPECIAL_TOKENS if s not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer has no special token(s) {missing}: it was not made for chat; "
                         "use a run trained by `python -m course_lib train chat`.")


def encode_chat(tokenizer, messages) -> tuple[list[int], list[int]]:
    """``(ids, mask)``: the rendered conversation's token ids, and 1 where the token is part
    of an assistant reply (its content and its end token), 0 for the user's turns and the
    role tokens. Each message is encoded on its own, so the mask follows message bounds."""
    check_messages(messages)
    check_chat_tokenizer(tokenizer)
    ids, mask = [], []
    for m in messages:
        role = [tokenizer.special_tokens[ROLE_TOKENS[m["role"]]]]
        body = tokenizer.encode(m["content"]) + [tokenizer.special_tokens[END]]
        learn = 1 if m["role"] == "assistant" else 0
        ids += role + body
        mask += [0] + [learn] * len(body)
    return ids, mask


def prompt_ids(tokenizer, messages) -> list[int]:
    """The ids the model reads before it writes the next reply."""
    check_chat_tokenizer(tokenizer)
    return tokenizer.encode(render(messages, add_generation_prompt=True), allowed_special="all")


class ChatSession:
    """A conversation with ``model``: ``send(text)`` streams the reply's text piece by piece.

    Sampling: ``temperature`` 0 is greedy; otherwise top-k sampling with ``seed``. A reply
    stops at the end token (or another special token), after ``max_new_tokens``, or when the
    context is full. When the conversation outgrows the model's context, its oldest turns are
    left out of what the model reads."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0):
        from course_lib.generate import check_sampling_args

        check_chat_tokenizer(tokenizer)
        check_sampling_args(temperature, top_k, None)
        block = model.config.block_size
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < block:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be between 1 and {block - 1} "
                             f"(the model's context is {block} tokens).")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_k = max_new_tokens, temperature, top_k
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        self.messages: list[dict] = []
        self.stop_ids = {tokenizer.special_tokens[s] for s in SPECIAL_TOKENS}

    def reset(self) -> None:
        self.messages = []

    def check_text(self, text: str) -> None:
        """A clear error for a message this model's tokenizer cannot read."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the message is empty; write some text.")
        check_messages([{"role": "user", "content": text}])
        try:
            self.tokenizer.encode(text)
        except ValueError as exc:
            known = "".join(sorted(t for t in getattr(self.tokenizer, "stoi", {}) if len(t) == 1 and t.isprintable()))
            hint = f"; it reads only these characters: {known!r}" if known else ""
            raise ValueError(f"this model cannot read the message ({str(exc).split(';')[0]}){hint}.") from None

    def _context(self) -> list[int]:
        """The ids the model reads: the latest whole turns that leave room for a reply of
        ``max_new_tokens``; the last message alone may leave less (the reply then stops when
        the context is full)."""
        block = self.model.config.block_size
        for first in range(0, len(self.messages), 2):  # drop whole (user, assistant) turns
            ids = prompt_ids(self.tokenizer, self.messages[first:])
            last = first == len(self.messages) - 1
            if len(ids) + self.max_new_tokens <= block or (last and len(ids) < block):
                return ids
        raise ValueError(f"the message is too long: {len(ids)} tokens with the template, and the model's "
                         f"context is {block}; write a shorter one.")

    @torch.no_grad()
    def send(self, text: str) -> Iterator[str]:
        """Add the user's ``text`` and yield the reply as it is generated, one token's text at
        a time; the finished reply joins the conversation."""
        from course_lib.generate import next_token_probs

        self.check_text(text)
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self._context()
        except ValueError:
            self.messages.pop()
            raise
        model, device = self.model, next(self.model.parameters()).device
        model.eval()
        caches = model.new_caches()
        step_input = torch.tensor([ids], device=device)
        reply: list[int] = []
        for _ in range(min(self.max_new_tokens, self.model.config.block_size - len(ids))):
            logits, _ = model(step_input, caches=caches)
            probs = next_token_probs(logits[:, -1], self.temperature, self.top_k)
            nxt = int(probs.argmax(-1)) if self.temperature == 0 else int(torch.multinomial(
                probs, 1, generator=self.generator))
            if nxt in self.stop_ids:  # the end token (or a role token: the reply is over too)
                break
            reply.append(nxt)
            yield self.tokenizer.decode([nxt])
            step_input = torch.tensor([[nxt]], device=device)
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})

    def reply(self, text: str) -> str:
        """The whole reply to ``text`` at once."""
        return "".join(self.send(text))


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: list[str], max_new_tokens: int = 48) -> list[tuple[str, bool]]:
    """Greedy replies to single-turn ``prompts``: ``(reply text, followed)`` each, where
    ``followed`` says the reply kept to the template (it ended with the end token, and no other
    special token came before it). Prompts of equal length run as one batch."""
    from course_lib.generate import generate

    check_chat_tokenizer(tokenizer)
    device = next(model.parameters()).device
    end, special = tokenizer.special_tokens[END], {tokenizer.special_tokens[s] for s in SPECIAL_TOKENS}
    encoded = [prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    out: list[tuple[str, bool] | None] = [None] * len(prompts)
    for length in sorted({len(e) for e in encoded}):
        rows = [i for i, e in enumerate(encoded) if len(e) == length]
        idx = torch.tensor([encoded[i] for i in rows], device=device)
        new = generate(model, idx, max_new_tokens, temperature=0, eos_id=end)[:, length:].tolist()
        for i, tokens in zip(rows, new):
            stop = next((k for k, t in enumerate(tokens) if t in special), len(tokens))
            followed = stop < len(tokens) and tokens[stop] == end
            out[i] = (tokenizer.decode(tokens[:stop]), followed)
    return out


def command(argv=None) -> int:
    """``python -m course_lib chat RUN``: talk to a chat model; one message per line on stdin.
    ``/reset`` starts a new conversation; an empty line, ``/quit`` or end of input ends."""
    import sys

    from course_lib.env import get_device
    from course_lib.models import load_trained
    from course_lib.training.core import Parser, UsageError

    p = Parser(prog="python -m course_lib chat",
               description="Talk to a chat model (trained by `python -m course_lib train chat`).")
    p.add_argument("run", help="run folder (or its checkpoint.safetensors)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best found)")
    args = p.parse_args(argv)
    from course_lib.generate import check_sampling_args

    try:
        check_sampling_args(args.temperature, args.top_k, None)
    except ValueError as exc:
        raise UsageError(f"--temperature/--top-k: {exc}") from None
    trained = load_trained(args.run, get_device(args.device, source="--device"), kind="gpt", command="chat")
    if trained.tokenizer is None:
        raise FileNotFoundError(f"no tokenizer.json beside {trained.path}; it is written with the checkpoint.")
    block = trained.model.config.block_size
    if not 1 <= args.max_new_tokens < block:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} must be between 1 and {block - 1} "
                         f"(the model's context is {block} tokens).")
    session = ChatSession(trained.model, trained.tokenizer, args.max_new_tokens, args.temperature,
                          args.top_k, args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {trained.path.parent} (an empty line ends, /reset starts over)")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        text = line.strip()
        if not text or text == "/quit":
            return 0
        if text == "/reset":
            session.reset()
            continue
        try:
            session.check_text(text)
        except ValueError as exc:
            print(f"error: {exc} (message skipped)", file=sys.stderr, flush=True)
            continue
        print("model> ", end="", flush=True)
        for piece in session.send(text):
            print(piece, end="", flush=True)
        print(flush=True)
