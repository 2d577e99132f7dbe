"""Demos to play with a trained model in the notebook (ipywidgets), and their logic.

- ``translation_demo(model, tokenizer)``: a text box for an English sentence; shows the
  translation (greedy or beam search) and the decoder's cross-attention over the source.
- ``sampling_demo(model, tokenizer)``: a prompt box and sliders for temperature, top-k and
  top-p; shows the next-token distribution before and after it is reshaped, and a sample.
- ``chat_demo(model, tokenizer)``: a message box; the chat model's reply streams in below,
  the conversation kept (``course_lib.chat.ChatSession``).

Each demo has two faces. Where a front end draws widgets (JupyterLab, Jupyter Notebook 7,
VS Code, Colab) it shows the controls and redraws on every change. Where none does (nbval,
nbclient, a script) it runs once with the values given and displays a static result,
deterministic, so that a ``# NBVAL_CHECK_OUTPUT`` cell can check it. ``COURSE_DEMO=static``
or ``COURSE_DEMO=interactive`` (or ``interactive=False/True``) overrides the choice.

The computations are plain functions (``translation_view``, ``sampling_view``) that return
a result with ``summary()`` and ``figure()``; the widgets only call them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from course_lib.decoding import beam_search, greedy_decode
from course_lib.generate import generate, next_token_probs

DEMO_ENV = "COURSE_DEMO"


def widgets_front_end() -> bool:
    """True when the cell runs in a front end that draws ipywidgets.

    JupyterLab, Notebook 7 and VS Code send each cell's id (``cellId``) with the request to
    run it; the headless runners (nbclient, nbconvert, nbval) send no such metadata. Colab
    is recognised by its module. ``COURSE_DEMO=static|interactive`` overrides the guess.
    """
    choice = os.environ.get(DEMO_ENV, "").strip().lower()
    if choice in ("static", "interactive"):
        return choice == "interactive"
    if choice:
        raise ValueError(f"{DEMO_ENV}={choice!r} is not 'static' or 'interactive'; unset it or pick one.")
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    if "google.colab" in sys.modules:
        return True
    try:
        parent = kernel.get_parent()
    except (AttributeError, TypeError):
        return False
    return bool((parent or {}).get("metadata", {}).get("cellId"))


def _interactive(interactive: bool | None) -> bool:
    if interactive is None:
        return widgets_front_end()
    if interactive:
        try:
            import ipywidgets  # noqa: F401
        except ImportError as exc:
            raise ImportError("the interactive demo needs ipywidgets: pip install ipywidgets") from exc
    return bool(interactive)


def _show(obj) -> None:
    try:
        from IPython.display import display
    except ImportError:
        print(obj)
        return
    display(obj)


def _label(token: str) -> str:
    """A token as a readable tick label: spaces and control characters made visible."""
    return repr(token)[1:-1].replace(" ", "\u2423") if token.strip() != token or not token.isprintable() \
        else token


@dataclass(repr=False)
class Demo:
    """What a demo returns: ``view``, the result on screen now (updated on every change),
    and ``ui``, the widget (None when the demo ran once, without a front end)."""

    view: object
    ui: object = None

    def __repr__(self) -> str:
        return f"Demo({self.view!r}, {'interactive' if self.ui is not None else 'static'})"


# ------------------------------------------------------------------ translation


@dataclass(repr=False)
class TranslationView:
    """One translation and its cross-attention (last decoder layer, mean of its heads)."""

    text: str
    beam_size: int
    translation: str
    source_tokens: list[str]  # the encoder's input, <eos> included
    target_tokens: list[str]  # the word each decoder position predicts, <eos> included
    cross: torch.Tensor  # (len(target_tokens), len(source_tokens)); rows sum to 1

    def __repr__(self) -> str:
        return f"TranslationView({self.text!r} -> {self.translation!r})"

    def alignment(self) -> list[tuple[str, str]]:
        """Each predicted word with the source word it attends to most."""
        best = self.cross.argmax(-1).tolist()
        return [(t, self.source_tokens[j]) for t, j in zip(self.target_tokens, best)]

    def summary(self) -> str:
        search = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        pairs = ", ".join(f"{t} <- {s}" for t, s in self.alignment())
        return f"{self.text}\n-> {self.translation}   ({search})\nlooks most at: {pairs}"

    def figure(self):
        from course_lib.plotting import heatmap

        return heatmap(self.cross, self.source_tokens, self.target_tokens, vmin=0.0, vmax=1.0,
                       title="cross-attention (last layer, mean of heads)",
                       xlabel="English (keys)", ylabel="German word predicted (queries)")


def _special(tokenizer, name: str) -> int:
    try:
        return tokenizer.special_tokens[name]
    except (AttributeError, KeyError):
        raise ValueError(f"the tokenizer has no {name} token; the translation demo needs "
                         "<pad>, <bos> and <eos> (a tokenizer built for translation).") from None


@torch.no_grad()
def translation_view(model, tokenizer, text: str, beam_size: int = 1,
                     max_new_tokens: int | None = None) -> TranslationView:
    """Translate ``text`` (greedy when ``beam_size`` is 1, else beam search) and read the
    decoder's cross-attention while it reads its own translation (teacher forcing)."""
    from course_lib.transformer import attention_maps

    text = text.strip()
    if not text:
        raise ValueError("type a sentence to translate.")
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (1 = greedy), got {beam_size}.")
    bos, eos = _special(tokenizer, "<bos>"), _special(tokenizer, "<eos>")
    device = next(model.parameters()).device
    max_len = model.config.max_len
    ids = tokenizer.encode(text)[: max_len - 1] + [eos]
    src = torch.tensor([ids], device=device)
    limit = min(max_len - 1, max_new_tokens or len(ids) + 50)
    was_training = model.training
    model.eval()
    out = greedy_decode(model, src, bos, eos, limit)[0] if beam_size == 1 else \
        beam_search(model, src, bos, eos, beam_size, limit)
    words = [t for t in out if t != eos]
    tgt_in = torch.tensor([[bos] + words], device=device)
    cross = attention_maps(model, src, tgt_in)["cross"][-1].mean(0).float().cpu()
    model.train(was_training)
    source = [_label(tokenizer.decode([i])) for i in ids[:-1]] + ["<eos>"]
    target = [_label(tokenizer.decode([i])) for i in words] + ["<eos>"]
    return TranslationView(text, beam_size, tokenizer.decode(words), source, target, cross)


def translation_demo(model, tokenizer, text: str = "today the man calls the young woman .",
                     beam_size: int = 1, interactive: bool | None = None):
    """A text box for an English sentence -> its translation and cross-attention map.

    Without a widget front end: translates ``text`` once, prints the summary and shows the
    map. With one: shows the widget. Returns a ``Demo`` whose ``view`` is what is on screen.
    """
    demo = Demo(translation_view(model, tokenizer, text, beam_size))
    if not _interactive(interactive):
        print(demo.view.summary())
        _show_figure(demo.view.figure())
        return demo
    import ipywidgets as w

    box = w.Text(value=text, description="English", continuous_update=False,
                 layout=w.Layout(width="40em"))
    search = w.Dropdown(options=[("greedy", 1), ("beam 2", 2), ("beam 4", 4)], value=beam_size if
                        beam_size in (1, 2, 4) else 1, description="search")
    out = w.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            try:
                demo.view = translation_view(model, tokenizer, box.value, search.value)
            except ValueError as exc:
                print(f"error: {exc}")
                return
            print(demo.view.summary())
            _show_figure(demo.view.figure())

    box.observe(redraw, names="value")
    search.observe(redraw, names="value")
    redraw()
    demo.ui = w.VBox([w.HBox([box, search]), out])
    _show(demo.ui)
    return demo


def _show_figure(fig) -> None:
    import matplotlib.pyplot as plt

    _show(fig)
    plt.close(fig)  # shown once, not again by the inline backend at the end of the cell


# ------------------------------------------------------------------ sampling


@dataclass(repr=False)
class SamplingView:
    """The next-token distribution for a prompt, before and after it is reshaped."""

    prompt: str
    temperature: float
    top_k: int | None
    top_p: float | None
    before: torch.Tensor  # (V,) softmax of the logits
    after: torch.Tensor  # (V,) next_token_probs(logits, temperature, top_k, top_p)
    labels: list[str]  # (V,) each id as text
    sample: str = ""
    shown: int = 20
    order: list[int] = field(default_factory=list)  # the ids plotted: most likely first (before)

    def __repr__(self) -> str:
        return f"SamplingView({self.prompt!r}, {self.settings()})"

    @property
    def kept(self) -> int:
        return int((self.after > 0).sum())

    def settings(self) -> str:
        k = "off" if self.top_k is None else self.top_k
        p = "off" if self.top_p is None or self.top_p >= 1.0 else f"{self.top_p:.2f}"
        return f"temperature {self.temperature:.2f}, top-k {k}, top-p {p}"

    def summary(self, n: int = 5) -> str:
        top = torch.argsort(self.after, descending=True, stable=True)[:n].tolist()
        best = ", ".join(f"{self.labels[i]!r} {float(self.after[i]):.2f}" for i in top)
        return (f"{self.settings()}: {self.kept} of {len(self.after)} tokens can be drawn\n"
                f"most likely next: {best}\nsample: {self.prompt + self.sample!r}")

    def figure(self):
        import matplotlib.pyplot as plt
        import numpy as np

        ids = self.order
        x = np.arange(len(ids))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(ids) + 1.5), 3.4))
        ax.bar(x, [float(self.before[i]) for i in ids], width=0.8, color="none", edgecolor="grey",
               linewidth=1.0, label="softmax(logits)")
        ax.bar(x, [float(self.after[i]) for i in ids], width=0.55, color="tab:blue",
               label="reshaped: what is sampled from")
        ax.set_xticks(x, labels=[self.labels[i] for i in ids], fontsize=9)
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("probability")
        ax.set_title(f"next token after {self.prompt[-30:]!r}: {self.settings()}", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        return fig


def _gpt_logits(model, ids: list[int], vocab_size: int) -> torch.Tensor:
    block = model.config.block_size
    idx = torch.tensor([ids[-block:]], device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, _ = model(idx)
    model.train(was_training)
    return logits[0, -1, :vocab_size].float().cpu()


def sampling_view(model, tokenizer, prompt: str, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, new_tokens: int = 40, seed: int = 0,
                  shown: int = 20) -> SamplingView:
    """The next-token distribution of a GPT after ``prompt``, as ``next_token_probs`` reshapes
    it, and a sample of ``new_tokens`` tokens drawn with the same settings (seeded).

    ``top_k`` 0 or None and ``top_p`` None or 1.0 switch that filter off.
    """
    if not prompt:
        raise ValueError("type a prompt (at least one character).")
    top_k = None if not top_k else int(top_k)
    top_p = None if top_p is None or top_p >= 1.0 else float(top_p)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens.")
    vocab = min(tokenizer.vocab_size, model.config.vocab_size)
    logits = _gpt_logits(model, ids, vocab)
    before = logits.softmax(-1)
    after = next_token_probs(logits, temperature, top_k, top_p)
    labels = [_label(tokenizer.decode([i])) for i in range(vocab)]
    order = torch.argsort(before, descending=True, stable=True)[:shown].tolist()
    text = ""
    if new_tokens > 0:
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        idx = torch.tensor([ids[-model.config.block_size:]], device=next(model.parameters()).device)
        out = generate(model, idx, new_tokens, temperature, top_k, top_p, generator=g, vocab_size=vocab)
        text = tokenizer.decode(out[0, idx.shape[1]:].tolist())
    return SamplingView(prompt, temperature, top_k, top_p, before, after, labels, text, shown, order)


def sampling_demo(model, tokenizer, prompt: str = "The ", temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, new_tokens: int = 40, seed: int = 0, interactive: bool | None = None):
    """A prompt box and sliders for temperature, top-k and top-p -> the next-token distribution
    as it is reshaped, and a sample. ``top_k=0`` and ``top_p=1.0`` mean "off".

    Without a widget front end: runs once with the values given (seeded: the same sample
    every run), prints the summary and shows the plot. With one: shows the widget. Returns
    a ``Demo`` whose ``view`` is what is on screen.
    """
    demo = Demo(sampling_view(model, tokenizer, prompt, temperature, top_k, top_p, new_tokens, seed))
    if not _interactive(interactive):
        print(demo.view.summary())
        _show_figure(demo.view.figure())
        return demo
    import ipywidgets as w

    box = w.Text(value=prompt, description="prompt", continuous_update=False, layout=w.Layout(width="40em"))
    style = {"description_width": "7em"}
    t = w.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05, description="temperature",
                      continuous_update=False, style=style, readout_format=".2f")
    k = w.IntSlider(value=top_k, min=0, max=min(100, tokenizer.vocab_size), step=1,
                    description="top-k (0: off)", continuous_update=False, style=style)
    p = w.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p (1: off)",
                      continuous_update=False, style=style, readout_format=".2f")
    out = w.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            try:
                demo.view = sampling_view(model, tokenizer, box.value, t.value, k.value, p.value,
                                          new_tokens, seed)
            except ValueError as exc:
                print(f"error: {exc}")
                return
            print(demo.view.summary())
            _show_figure(demo.view.figure())

    for control in (box, t, k, p):
        control.observe(redraw, names="value")
    redraw()
    demo.ui = w.VBox([box, w.HBox([t, k, p]), out])
    _show(demo.ui)
    return demo


def chat_demo(model, tokenizer, messages=("reverse: cat dog sun",), max_new_tokens: int = 48,
              interactive: bool | None = None):
    """A message box and the conversation below it; each reply streams in token by token.

    Without a widget front end: sends ``messages`` one after the other and prints the
    conversation (greedy: the same every run). With one: shows the box (Enter or "send"),
    a "new conversation" button, and the conversation (CSS class ``course-chat-log``).
    Returns the ``ChatSession``."""
    from course_lib.chat import ChatSession

    session = ChatSession(model, tokenizer, max_new_tokens=max_new_tokens)
    if not _interactive(interactive):
        for text in messages:
            print(f"you> {text}\nmodel> {session.reply(text)}")
        return session
    import ipywidgets as w

    box = w.Text(placeholder="reverse: cat dog sun", description="you", continuous_update=False,
                 layout=w.Layout(width="30em"))
    box.add_class("course-chat-input")
    send, reset = w.Button(description="send"), w.Button(description="new conversation")
    log = w.Output()
    log.add_class("course-chat-log")

    def on_send(_=None):
        text = box.value.strip()
        if not text:  # also the event of clearing the box below
            return
        box.value = ""
        with log:
            try:
                session.check_text(text)
            except ValueError as exc:
                print(f"error: {exc}")
                return
            print(f"you> {text}\nmodel> ", end="")
            for piece in session.send(text):
                print(piece, end="", flush=True)
            print()

    def on_reset(_=None):
        session.reset()
        log.clear_output()

    box.observe(on_send, names="value")  # Enter (or leaving the box) sends
    send.on_click(on_send)
    reset.on_click(on_reset)
    _show(w.VBox([w.HBox([box, send, reset]), log]))
    return session
