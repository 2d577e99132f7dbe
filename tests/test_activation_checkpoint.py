"""Activation checkpointing (course_lib.scaleout.activation_checkpoint) against the
un-checkpointed model and against bytes counted by hand.

References: the same GPT without checkpointing (its loss and gradients), and, for the
memory count, a stack of two-layer blocks whose kept tensors are counted by hand from what
each operation saves for its backward pass.
"""

import pytest
import torch
from torch import nn

from course_lib.gpt import GPT, GPTConfig
from course_lib.scaleout.activation_checkpoint import (
    activation_memory,
    checkpoint_blocks,
    is_checkpointed,
)


def gpt_gradients(checkpointed: bool, dropout: float = 0.0):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=12, n_layers=3, n_heads=2, d_model=16, dropout=dropout))
    checkpoint_blocks(model, checkpointed)
    tokens = torch.randint(0, 50, (4, 13), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # dropout's masks
    loss = model(tokens[:, :-1], tokens[:, 1:])[1]
    loss.backward()
    return model, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointed_gpt_has_the_same_loss_and_gradients(one_thread, dropout):
    plain, loss, grads = gpt_gradients(False, dropout)
    ckpt, ckpt_loss, ckpt_grads = gpt_gradients(True, dropout)
    assert all(is_checkpointed(b) for b in ckpt.layers) and not any(is_checkpointed(b) for b in plain.layers)
    assert ckpt.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    assert ckpt_loss == pytest.approx(loss, abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert not any(is_checkpointed(b) for b in checkpoint_blocks(ckpt, False).layers)


class TwoLayer(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w1, self.w2 = nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)))


class Stack(nn.Module):
    def __init__(self, n, d, h):
        super().__init__()
        self.layers = nn.ModuleList(TwoLayer(d, h) for _ in range(n))

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x.sum()


@pytest.mark.parametrize("n,B,d,h", [(3, 5, 4, 16), (5, 2, 8, 8)])
def test_kept_bytes_match_a_count_by_hand(one_thread, n, B, d, h):
    """Kept after the forward pass, by hand: without checkpointing each block keeps ReLU's
    output (w2's input and ReLU's own backward need it, B h floats) and every block but the
    last its output (the next w1's input, B d floats; the sum keeps nothing); with
    checkpointing only the n - 1 block outputs that are the next block's input. Plus the
    4-byte loss. A count that took the parameters' views (w.t()) as new, or checkpointing that
    did not happen, would miss."""
    model, x = Stack(n, d, h), torch.randn(B, d)

    def kept(on):
        checkpoint_blocks(model, on)
        return activation_memory(lambda: model(x), existing=[*model.parameters(), x])

    plain, ckpt = kept(False), kept(True)
    assert plain["after_forward"] == 4 * (n * B * h + (n - 1) * B * d) + 4
    assert ckpt["after_forward"] == 4 * (n - 1) * B * d + 4
    assert plain["peak"] >= plain["after_forward"] and ckpt["peak"] >= ckpt["after_forward"]
    with_params = activation_memory(lambda: model(x), existing=[x])  # w.t() is a view of w: counted
    assert with_params["after_forward"] > ckpt["after_forward"]


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="no blocks to checkpoint"):
        checkpoint_blocks(nn.Linear(2, 2))
