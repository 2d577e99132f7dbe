"""How much GPU memory one training step needs, known before the first step, without a GPU.

Two ways, tested against each other:

- ``estimate_memory``: an analytic count. Every tensor a training step keeps is listed by
  hand from what each layer saves for its backward pass (the inputs of the matmuls, the
  LayerNorm statistics, the attention kernel's output and log-sum-exp, ...), times the bytes
  of its dtype. It runs in microseconds for any size, so the planner can try many batches.
- ``measure_memory``: the real model code and the library's training step
  (``course_lib.training.loop.train_step``) run under PyTorch's ``FakeTensorMode`` (tensors
  with shapes and dtypes but no storage) on the CPU, with a ``TorchDispatchMode``
  (``PeakBytes``) counting the bytes of every storage from the operation that makes it
  until Python frees it, and the peak. It allocates nothing, so it also runs for
  ``gpt2-124m`` on a laptop, in seconds.

Where the peak is. Gradient accumulation holds the gradients of earlier micro-batches, the
optimizer keeps its state between steps, and the forward pass keeps every saved tensor
until the backward pass reaches it, so the peak is at the start of the backward pass:

    weights            float32 parameters and buffers
    gradients          float32, one per parameter (held across micro-batches)
    optimizer state    AdamW/Adam: two float32 moments per parameter (+ a step counter per tensor)
    weight copies      bf16/fp16 copies of the matmul weights that autocast makes and
                       the backward pass needs (none in float32)
    activations        what the layers saved for backward
    logits             the logits, the float32 log-softmax of the loss, and the two float32
                       gradients the loss's backward pass makes from it: (B, T, vocab) each

The count models the eager CUDA kernels the course uses: fused attention (FlashAttention or
memory-efficient attention: no T x T matrix), a 1-byte mask per dropout site. The fake
measurement runs the CPU kernels, which match these with dropout 0 (with dropout > 0
the CPU computes attention explicitly, so the two are compared at dropout 0), with the
CPU-only written-out attention for short sequences switched off (it keeps the T x T weights). Under
``torch.compile`` the peak is lower (fused elementwise kernels save fewer tensors): the
estimate is then an upper bound.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

from course_lib import checks
from course_lib.gpt import GPTConfig
from course_lib.llama import LlamaConfig
from course_lib.transformer import TransformerConfig

DECODERS = (GPTConfig, LlamaConfig)  # decoder-only language models: block_size tokens, (x, y) batches

COMPONENTS = ("weights", "gradients", "optimizer", "weight_copies", "activations", "logits")
OPTIMIZERS = ("adamw", "adam", "sgd")
GiB = 2**30


@dataclass
class MemoryEstimate:
    """Bytes at the peak of one training step, by component (see the module text)."""

    weights: int
    gradients: int
    optimizer: int
    weight_copies: int
    activations: int
    logits: int
    n_params: int = 0
    precision: str = "bf16"

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in COMPONENTS)

    def gib(self) -> dict[str, float]:
        """Each component and the total, in GiB."""
        return {**{c: getattr(self, c) / GiB for c in COMPONENTS}, "total": self.total / GiB}

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


# ---- parameters ----------------------------------------------------------------------------

@dataclass
class ParamCount:
    n_params: int  # unique parameters (a tied matrix once)
    n_tensors: int  # unique parameter tensors
    matmul_weights: int  # weight elements autocast copies to bf16/fp16 and keeps for backward
    buffer_bytes: int  # non-parameter tensors the model holds (the sinusoidal table)


def count_parameters(config: GPTConfig | TransformerConfig) -> ParamCount:
    """Parameters of ``course_lib.gpt.GPT`` / ``course_lib.transformer.Transformer``, counted
    from the config alone (the tests compare them with the real models)."""
    if isinstance(config, GPTConfig):
        V, d, L, b = config.vocab_size, config.d_model, config.n_layers, int(config.bias)
        ln, ln_t = (1 + b) * d, 1 + b
        layer = 2 * ln + 4 * (d * d + b * d) + (4 * d * d + b * 4 * d) + (4 * d * d + b * d)
        layer_t = 2 * ln_t + 4 * (1 + b) + 2 * (1 + b)
        n = V * d + config.block_size * d + L * layer + ln
        tensors = 2 + L * layer_t + ln_t
        return ParamCount(n, tensors, L * 12 * d * d + V * d, 0)
    if isinstance(config, TransformerConfig):
        d, f, Le, Ld = config.d_model, config.d_ff, config.n_layers, config.decoder_layers
        Vs, Vt = config.src_vocab_size, config.tgt_vocab_size
        attn, ff, ln = 4 * (d * d + d), d * f + f + f * d + d, 2 * d
        shared = bool(config.share_embeddings)  # one matrix for both embeddings (3.4)
        n = (0 if shared else Vs * d) + Vt * d + (0 if config.tie_embeddings else Vt * d)
        n += Le * (attn + ff + 2 * ln) + Ld * (2 * attn + ff + 3 * ln) + (2 * ln if config.norm_first else 0)
        tensors = (1 if shared else 2) + (0 if config.tie_embeddings else 1) + Le * (8 + 4 + 4) + Ld * (16 + 4 + 6)
        tensors += 4 if config.norm_first else 0
        matmul = Le * (4 * d * d + 2 * d * f) + Ld * (8 * d * d + 2 * d * f) + Vt * d
        return ParamCount(n, tensors, matmul, 4 * config.max_len * d)
    if isinstance(config, LlamaConfig):
        return _count_llama(config)
    raise TypeError(f"expected a GPTConfig or TransformerConfig or LlamaConfig, got {type(config).__name__}.")


def _count_llama(c: LlamaConfig) -> ParamCount:
    """``course_lib.llama.Llama``: no biases, RMSNorm gains only, Q/O of n_heads heads and
    K/V of n_kv_heads, SwiGLU's three matrices; the RoPE tables are buffers."""
    V, d, L, f = c.vocab_size, c.d_model, c.n_layers, c.d_ff
    attn = 2 * d * c.n_heads * c.head_size + 2 * d * c.n_kv_heads * c.head_size
    layer = attn + 3 * d * f + 2 * d + (2 * c.head_size if c.qk_norm else 0)
    head = 0 if c.tie_embeddings else V * d
    n = V * d + head + L * layer + d
    tensors = 1 + (0 if c.tie_embeddings else 1) + L * (4 + 3 + 2 + (2 if c.qk_norm else 0)) + 1
    return ParamCount(n, tensors, L * (attn + 3 * d * f) + V * d, 4 * c.block_size * c.head_size)


def optimizer_bytes(n_params: int, n_tensors: int, optimizer: str = "adamw") -> int:
    """State bytes: Adam(W) keeps two float32 moments per parameter and a float32 step
    counter per tensor; SGD with momentum one float32 buffer per parameter."""
    if optimizer in ("adamw", "adam"):
        return 8 * n_params + 4 * n_tensors
    if optimizer == "sgd":
        return 4 * n_params
    raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}.")


# ---- the analytic count ----------------------------------------------------------------------

def _check(config, batch_size: int, seq_len: int, precision: str, optimizer: str) -> None:
    from course_lib.training.precision import DTYPES

    if not isinstance(precision, str) or precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)} (resolve 'auto' first), got {precision!r}.")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}.")
    checks.count("batch_size", batch_size)
    checks.count("seq_len", seq_len)
    limit = config.block_size if isinstance(config, DECODERS) else config.max_len
    if seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is longer than the model's context of {limit} tokens.")


def _ff_bytes(a: int, BT: int, f: int, p_drop: bool, act: str) -> int:
    """Feed-forward inner activations: ReLU keeps its output (which the second matmul also
    reads); GELU keeps its input and the matmul its output; dropout adds a mask and a copy."""
    inner = a * BT * f * (1 if act == "relu" else 2)
    return inner + ((1 + a) * BT * f if p_drop else 0)


def _fused_qkv() -> bool:
    """Whether the course's attention projects Q, K and V of self-attention with one stacked
    matmul (``MultiHeadAttention.project_qkv``) rather than three: it saves what it casts once."""
    from course_lib.attention import MultiHeadAttention

    return hasattr(MultiHeadAttention, "project_qkv")


def estimate_memory(config: GPTConfig | TransformerConfig, batch_size: int, seq_len: int | None = None,
                    precision: str = "bf16", optimizer: str = "adamw", *, src_len: int | None = None,
                    keep_logits: bool | None = None, label_smoothing: float = 0.0) -> MemoryEstimate:
    """The analytic count of the peak of one training step (eager, CUDA kernels).

    ``seq_len``: tokens per sequence (GPT; default its ``block_size``), or target tokens
    (Transformer; ``src_len`` source tokens, default the same). ``precision``: ``bf16`` or
    ``fp16`` (autocast) or ``fp32``. ``keep_logits``: whether the logits stay alive through
    the backward pass (a loop that holds them: ``logits, loss = model(x, y)``); default:
    yes for a GPT, no for a Transformer (an upper bound for the GPT: the library's
    ``train_step`` keeps only the loss).
    """
    is_gpt = isinstance(config, DECODERS)
    seq_len = seq_len or (config.block_size if is_gpt else config.max_len)
    _check(config, batch_size, seq_len, precision, optimizer)
    pc = count_parameters(config)
    sizes = _Bytes(precision)
    if is_gpt:
        acts, V = _gpt_activations(config, batch_size, seq_len, sizes), config.vocab_size
        keep = True if keep_logits is None else keep_logits
    else:
        acts = _transformer_activations(config, batch_size, seq_len, src_len or seq_len, sizes)
        V, keep = config.tgt_vocab_size, False if keep_logits is None else keep_logits
    BT, d, a = batch_size * seq_len, config.d_model, sizes.a
    # The logits, if held, and what is alive on top of the saved activations at the peak:
    # at the start of the backward pass the float32 log-softmax and its two gradients, each
    # (B, T, V); with a small vocabulary the peak moves into the last layer's backward pass,
    # where the feed-forward's hidden gradient and the residual gradient are alive.
    f_last = config.d_ff if isinstance(config, (LlamaConfig, TransformerConfig)) else 4 * d
    logits = (a * BT * V if keep else 0) + max(12 * BT * V, a * BT * f_last + 4 * BT * d)
    # Weight copies: autocast's bf16/fp16 copy of every matmul weight; with the stacked
    # projection, float32 also keeps the stacked W_Q|W_K|W_V (3 d^2) of each self-attention.
    n_self_attn = config.n_layers if is_gpt else config.n_layers + config.decoder_layers
    copies = a * pc.matmul_weights if sizes.amp else (4 * 3 * d * d * n_self_attn if sizes.fused else 0)
    return MemoryEstimate(weights=4 * pc.n_params + pc.buffer_bytes, gradients=4 * pc.n_params,
                          optimizer=optimizer_bytes(pc.n_params, pc.n_tensors, optimizer), weight_copies=copies,
                          activations=acts, logits=logits, n_params=pc.n_params, precision=precision)


class _Bytes:
    """Bytes per element of what a layer saves under ``precision``: ``a`` for a matmul's
    input or output; ``qkv_in`` for self-attention's projection inputs (autocast casts x
    once per matmul: three separate projections, or one for the stacked W_Q|W_K|W_V;
    float32 saves x itself, once); ``one_in`` for another matmul's input."""

    def __init__(self, precision: str):
        self.amp = precision != "fp32"
        self.a = 2 if self.amp else 4
        self.fused = _fused_qkv()
        self.qkv_in = (self.a if self.fused else 3 * self.a) if self.amp else 4
        self.one_in = self.a if self.amp else 4


def _gpt_activations(config: GPTConfig | LlamaConfig, B: int, T: int, z: _Bytes) -> int:
    """What a decoder-only model's (GPT's or Llama's) forward pass saves for backward, in bytes."""
    a, BT, d, H, p_drop = z.a, B * T, config.d_model, config.n_heads, config.dropout > 0
    layer = _llama_layer_bytes(config, B, T, a, z.amp) if isinstance(config, LlamaConfig) else (
             4 * BT * d + 8 * BT  # ln_1 input and statistics
             + z.qkv_in * BT * d + 3 * a * BT * d + a * BT * d + 4 * B * H * T  # q, k, v, out, lse
             + (BT * d if p_drop else 0)  # residual dropout mask
             + 4 * BT * d + 8 * BT + z.one_in * BT * d  # ln_2, the MLP's input
             + _ff_bytes(a, BT, 4 * d, False, config.activation) + (BT * d if p_drop else 0))
    acts = config.n_layers * layer
    acts += 8 * B * (T + 1) + 8 * BT  # token ids (a view of the batch) and the targets (a copy)
    return acts + (BT * d if p_drop else 0) + 4 * BT * d + 8 * BT + z.one_in * BT * d  # ln_f, the head's input


def _transformer_activations(config: TransformerConfig, B: int, T: int, S: int, z: _Bytes) -> int:
    """What an encoder-decoder's forward pass saves for backward, in bytes (T target and S
    source tokens per example)."""
    a, d, H, f, p_drop = z.a, config.d_model, config.n_heads, config.d_ff, config.dropout > 0
    BT, BS, qkv_in, one_in = B * T, B * S, z.qkv_in, z.one_in
    enc = (qkv_in * BS * d + a * B * S  # projection inputs, the padding mask as a float bias
           + 3 * a * BS * d + a * BS * d + 4 * B * H * S  # q, k, v, out, lse
           + one_in * BS * d  # heads merged (a copy after the fully-masked-row fix)
           + 4 * BS * d + 8 * BS + one_in * BS * d  # norm1, the feed-forward's input
           + _ff_bytes(a, BS, f, p_drop, config.activation)
           + 4 * BS * d + 8 * BS + (2 * BS * d if p_drop else 0))  # norm2, two dropout masks
    dec = (qkv_in * BT * d + 3 * a * BT * d + a * BT * d + 4 * B * H * T  # causal self-attention
           + 4 * BT * d + 8 * BT  # norm1
           + one_in * BT * d + (2 * a * BS * d if z.amp else 0) + a * B * S  # cross-attention inputs
           + a * BT * d + 2 * a * BS * d + a * BT * d + 4 * B * H * T + one_in * BT * d
           + 4 * BT * d + 8 * BT + one_in * BT * d  # norm2, the feed-forward's input
           + _ff_bytes(a, BT, f, p_drop, config.activation)
           + 4 * BT * d + 8 * BT + (3 * BT * d if p_drop else 0))
    acts = config.n_layers * enc + config.decoder_layers * dec
    acts += 0 if z.amp else 4 * BS * d  # float32: the encoder output, read by every cross-attention
    acts += 8 * BS + 8 * B * (T + 1) + 8 * BT  # source ids, target ids (a view), targets (a copy)
    acts += (BS * d + BT * d) if p_drop else 0  # dropout after the positional encoding
    if config.norm_first:
        acts += 4 * BS * d + 8 * BS + 4 * BT * d + 8 * BT  # the two final LayerNorms
    return acts + one_in * BT * d  # the output projection's input


# ---- the measurement: fake tensors and PyTorch's memory tracker ------------------------------

def _llama_layer_bytes(c: LlamaConfig, B: int, T: int, a: int, amp: bool) -> int:
    """What one ``LlamaLayer`` saves for backward: two RMSNorms (float32 input, 1/rms and the
    normalised output), the projections' inputs and outputs, RoPE's rotated q and k (a new
    tensor each), the attention output and log-sum-exp, and SwiGLU's gate, its SiLU, the up
    projection and their product."""
    BT, d, hs, f = B * T, c.d_model, c.head_size, c.d_ff
    q, kv = BT * c.n_heads * hs, BT * c.n_kv_heads * hs
    norms = 2 * (8 * BT * d + 4 * BT)
    x_in = (3 if amp else 1) * a * BT * d  # autocast casts x for each matmul; float32 saves x once
    attn = x_in + 2 * a * (q + 2 * kv) + a * q + a * q + 4 * B * c.n_heads * T
    if c.qk_norm:
        attn += 8 * (q + kv) + 4 * (q + kv) // hs
    ff = (2 if amp else 1) * a * BT * d + 4 * a * BT * f
    return norms + attn + ff + (2 * BT * d if c.dropout > 0 else 0)


def _make_optimizer(params, optimizer: str):
    import torch

    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-4, foreach=False)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=1e-4, foreach=False)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=False)
    raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}.")


class PeakBytes:
    """A ``TorchDispatchMode`` that counts the bytes of every tensor storage alive and keeps
    the peak: each storage is counted when an operation first returns it and subtracted
    when Python frees it (as the CUDA caching allocator's ``max_memory_allocated`` counts,
    without its 512-byte rounding). Works on fake tensors, so nothing is allocated."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.track(out)
                return out

        self._mode = _Mode()
        self._seen = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def track(self, obj) -> None:
        """Count the storages of the tensors in ``obj`` (any nesting) not counted yet."""
        import weakref

        import torch
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(obj):
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            st = t.untyped_storage()
            if st in self._seen:
                continue
            n = st.nbytes()
            self._seen[st] = n
            weakref.finalize(st, self._free, n)
            self.live += n
            self.peak = max(self.peak, self.live)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once: the
    gradients of a stacked W_Q|W_K|W_V projection are three views of one gradient)."""
    storages = {}
    for t in tensors:
        st = t.untyped_storage()
        storages[id(st)] = st  # keeps each alive, so no id is reused while counting
    return sum(st.nbytes() for st in storages.values())


def _training_step(model, opt, config, B: int, T: int, S: int, precision, keep: bool, label_smoothing: float,
                   device):
    """``step(n_micro)``: one optimizer step of the shipped ``train_step`` with the trainers'
    losses, on a batch of ``n_micro`` micro-batches of ``B`` random sequences; ``keep``
    holds each micro-batch's logits through its backward pass. Returns the bytes of the
    gradients just before the optimizer step."""
    import torch

    from course_lib.training.loop import train_step
    from course_lib.training.translation import target_loss

    is_gpt = isinstance(config, DECODERS)
    held, grads = [], []

    def loss_of(m, batch):  # the trainers' losses, with the logits in sight
        if is_gpt:
            logits, loss = m(*batch)
        else:
            logits = m(batch[0], batch[1][:, :-1])
            loss = target_loss(logits, batch[1], config.pad_id, label_smoothing)
        held[:] = [logits] if keep else []
        return loss

    def gradient_bytes(max_norm: float) -> None:  # where the step clips: the gradients are all there
        grads[:] = [_storage_bytes(p.grad for p in model.parameters() if p.grad is not None)]

    def step(n_micro: int) -> int:
        if is_gpt:
            chunk = torch.randint(0, config.vocab_size, (n_micro * B, T + 1), device=device)
            batch = (chunk[:, :-1], chunk[:, 1:])
        else:
            batch = (torch.randint(1, config.src_vocab_size, (n_micro * B, S), device=device),
                     torch.randint(1, config.tgt_vocab_size, (n_micro * B, T + 1), device=device))
        train_step(model, opt, batch, loss_of, grad_accum=n_micro, precision=precision, clip_grad=gradient_bytes)
        held.clear()
        return grads[0]

    return step


@contextmanager
def _replaced(module, name: str, value):
    """``module.name`` is ``value`` inside the block, and what it was after."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def _resolve(config, batch_size, seq_len, precision, optimizer, src_len, keep_logits):
    is_gpt = isinstance(config, DECODERS)
    seq_len = seq_len or (config.block_size if is_gpt else config.max_len)
    _check(config, batch_size, seq_len, precision, optimizer)
    return seq_len, src_len or seq_len, (is_gpt if keep_logits is None else keep_logits)


def _model_of(config):
    from course_lib.gpt import GPT
    from course_lib.llama import Llama
    from course_lib.transformer import Transformer

    return {GPTConfig: GPT, LlamaConfig: Llama, TransformerConfig: Transformer}[type(config)](config)


def measure_memory(config: GPTConfig | TransformerConfig, batch_size: int, seq_len: int | None = None,
                   precision: str = "bf16", optimizer: str = "adamw", *, src_len: int | None = None,
                   keep_logits: bool | None = None, label_smoothing: float = 0.0,
                   grad_accum: int = 2) -> dict[str, int]:
    """Run a training step of the real model under ``FakeTensorMode`` on the CPU and count the
    bytes alive at its peak (``PeakBytes``): ``grad_accum`` micro-batches (2: the gradients of
    the first are held through the second, as ``estimate_memory`` assumes), then the
    optimizer step, after a first step that created the optimizer state. Returns the peak
    ``total`` and the bytes of ``parameters``, ``buffers``, ``gradients`` and ``optimizer``
    state as the real optimizer made them. Nothing is allocated: it runs for ``gpt2-124m``.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import course_lib.attention as A
    import course_lib.embeddings as E
    from course_lib.training.precision import Precision

    T, S, keep = _resolve(config, batch_size, seq_len, precision, optimizer, src_len, keep_logits)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # fake tensors cannot be checked for overflow
    prec = Precision(precision, "cpu", scaler=scaler)

    nbytes = _storage_bytes

    # The embeddings check token ids on the host (int(ids.max())), which fake tensors cannot;
    # attention takes the fused kernel (as on a GPU) however many threads this CPU runs.
    with _replaced(E, "_check_ids", lambda ids, vocab_size: None), _replaced(A, "CPU_SHORT_ATTENTION", 0), \
            FakeTensorMode():
        with torch.device("cpu"):
            model = _model_of(config)
        opt = _make_optimizer(model.parameters(), optimizer)
        step = _training_step(model, opt, config, batch_size, T, S, prec, keep, label_smoothing, "cpu")
        for p in model.parameters():  # one step on zero gradients creates the optimizer state
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tracker = PeakBytes()
        tracker.track([list(model.parameters()), list(model.buffers()),
                       [v for s in opt.state.values() for v in s.values()]])
        with tracker:
            grads = step(grad_accum)
        state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return {"parameters": nbytes(model.parameters()), "buffers": nbytes(model.buffers()),
                "gradients": grads, "optimizer": nbytes(state), "total": tracker.peak}


def measure_cuda_memory(config: GPTConfig | TransformerConfig, batch_size: int, seq_len: int | None = None,
                        precision: str = "bf16", optimizer: str = "adamw", *, src_len: int | None = None,
                        keep_logits: bool | None = None, label_smoothing: float = 0.0, grad_accum: int = 2,
                        compile: bool = False, device: str = "cuda") -> dict[str, float]:
    """The same step on a real CUDA GPU: ``torch.cuda.max_memory_allocated`` over the second
    optimizer step (the first creates the optimizer state and, compiled, the kernels), and the
    seconds that step took. For ``gpu_check``. On another device (a test on the CPU) the
    same code runs and ``total`` is None."""
    import time

    import torch

    from course_lib.training.precision import Precision, maybe_compile

    T, S, keep = _resolve(config, batch_size, seq_len, precision, optimizer, src_len, keep_logits)
    cuda = torch.device(device).type == "cuda"
    prec = Precision(precision, torch.device(device).type)
    torch.manual_seed(0)
    model = _model_of(config).to(device)
    fused = {"fused": True} if optimizer in ("adamw", "adam") and cuda else {}
    opt = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam,
           "sgd": lambda p, **k: torch.optim.SGD(p, momentum=0.9, **k)}[optimizer](
        model.parameters(), lr=1e-4, **fused)
    fn = maybe_compile(model, compile, log=print)
    step = _training_step(fn, opt, config, batch_size, T, S, prec, keep, label_smoothing, device)
    step(grad_accum)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step(grad_accum)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"total": torch.cuda.max_memory_allocated() if cuda else None, "seconds": seconds,
           "tokens_per_s": grad_accum * batch_size * T / seconds}
    del model, opt, fn, step
    if cuda:
        torch.cuda.empty_cache()
    return out


# ---- tables and plots -------------------------------------------------------------------------

def memory_table(rows: list[dict]):
    """A pandas DataFrame from rows ``{"model", "device", "estimate": MemoryEstimate, ...}``
    (extra keys become columns, e.g. ``micro_batch``, ``device memory``): one column per
    component and the total, in GiB."""
    import pandas as pd

    records = []
    for row in rows:
        est = row["estimate"]
        extra = {k: v for k, v in row.items() if k not in ("model", "device", "estimate")}
        records.append({"model": row["model"], "device": row["device"], "precision": est.precision, **extra,
                        **{c: round(v, 2) for c, v in est.gib().items()}})
    return pd.DataFrame.from_records(records)


def plot_memory(table, title: str = "Peak memory of one training step (GiB)"):
    """Stacked bars of the components for each row of ``memory_table``, with the device's
    memory (column ``device memory``, if present) as a dashed line. Returns the figure."""
    from course_lib.plotting import stacked_bars

    labels = [f"{r['model']}\n{r['device']}\n{r['precision']}" + (f" x{r['micro_batch']}" if "micro_batch" in r else "")
              for _, r in table.iterrows()]
    limits = list(table["device memory"]) if "device memory" in table else None
    return stacked_bars({c.replace("_", " "): list(table[c]) for c in COMPONENTS}, labels, title=title,
                        ylabel="GiB", limits=limits, limit_label="device memory")
