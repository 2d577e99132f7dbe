"""The paper's weight sharing (3.4): one matrix for the source embedding, the target
embedding and the pre-softmax projection. Checked against a second model that holds the
three as separate copies: same outputs, and the shared gradient is the sum of the three
copies' gradients. Checkpoints of either kind (and of before the option) still load."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib.checkpoint import save_checkpoint
from course_lib.models import load_trained
from course_lib.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")
EMBEDS = ("src_embed.weight", "tgt_embed.weight", "out_proj.weight")


def small(**kw) -> TransformerConfig:
    return TransformerConfig(**{"src_vocab_size": 23, "tgt_vocab_size": 23, "d_model": 16, "n_heads": 2,
                                "n_layers": 1, "d_ff": 32, "dropout": 0.0, "max_len": 16, **kw})


def batch(seed=0, vocab=23):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (3, 7), generator=g)
    tgt = torch.randint(3, vocab, (3, 6), generator=g)
    src[0, 5:] = 0  # padding
    return src, tgt


def test_default_shares_one_tensor_between_three_uses():
    model = Transformer(small())
    assert model.config.share_embeddings is True and model.config.tie_embeddings
    src, tgt, out = (getattr(model, n.split(".")[0]).weight for n in EMBEDS)
    assert src is tgt is out
    params = dict(model.named_parameters())  # one parameter, counted once
    assert sum(n in params for n in EMBEDS) == 1
    separate = Transformer(small(share_embeddings=False, tie_embeddings=False))
    assert separate.num_parameters() - model.num_parameters() == 2 * 23 * 16
    # only the target embedding and the output (before this option: tie_embeddings alone)
    old = Transformer(small(share_embeddings=False))
    assert old.src_embed.weight is not old.tgt_embed.weight and old.out_proj.weight is old.tgt_embed.weight


def test_different_vocabularies_do_not_share_by_default_and_refuse_to():
    cfg = small(src_vocab_size=30)
    assert cfg.share_embeddings is False
    with pytest.raises(ValueError, match="share_embeddings=True needs one vocabulary"):
        small(src_vocab_size=30, share_embeddings=True)


def test_shared_gradient_is_the_sum_of_the_three_uses():
    torch.manual_seed(0)
    shared = Transformer(small())
    copies = Transformer(small(share_embeddings=False, tie_embeddings=False))
    state = shared.state_dict()  # all three names, one tensor's values
    copies.load_state_dict(state)
    for n in EMBEDS:  # three separate tensors holding equal values
        assert torch.equal(copies.get_parameter(n), shared.get_parameter(n))
    assert len({copies.get_parameter(n).data_ptr() for n in EMBEDS}) == 3

    src, tgt = batch()
    out_shared, out_copies = shared(src, tgt), copies(src, tgt)
    torch.testing.assert_close(out_shared, out_copies, rtol=0, atol=0)
    w = torch.randn_like(out_shared)
    (out_shared * w).sum().backward()
    (out_copies * w).sum().backward()
    parts = [copies.get_parameter(n).grad for n in EMBEDS]
    for part in parts:  # each of the three uses contributes
        assert part.abs().sum() > 0
    total = shared.tgt_embed.weight.grad
    torch.testing.assert_close(total, parts[0] + parts[1] + parts[2], rtol=1e-5, atol=1e-6)
    # ... and no two of them alone make the sum (the check would catch a use left out)
    for i in range(3):
        partial = sum(p for j, p in enumerate(parts) if j != i)
        assert not torch.allclose(total, partial, rtol=1e-3, atol=1e-5)
    # the other parameters get the same gradients in both models
    for name, p in copies.named_parameters():
        if name not in EMBEDS:
            torch.testing.assert_close(shared.get_parameter(name).grad, p.grad, rtol=1e-5, atol=1e-6)


def test_one_optimizer_step_keeps_the_three_equal():
    model = Transformer(small())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    src, tgt = batch(1)
    model(src, tgt).square().mean().backward()
    opt.step()
    sd = model.state_dict()
    assert torch.equal(sd["src_embed.weight"], sd["out_proj.weight"])


@pytest.mark.parametrize("share", [True, False])
def test_checkpoints_of_either_kind_load(tmp_path, share):
    torch.manual_seed(1)
    model = Transformer(small(share_embeddings=share))
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, model.config.to_dict())
    stored = load_file(str(tmp_path / "checkpoint.safetensors"))  # one copy per name (safetensors)
    assert all(f"model.{n}" in stored for n in EMBEDS)
    trained = load_trained(tmp_path, kind="transformer")
    assert trained.model.config.share_embeddings is share
    assert (trained.model.src_embed.weight is trained.model.tgt_embed.weight) is share
    src, tgt = batch(2)
    torch.testing.assert_close(trained.model(src, tgt), model.eval()(src, tgt), rtol=0, atol=0)


def test_a_checkpoint_from_before_the_option_loads_unshared(tmp_path):
    """Configs written before ``share_embeddings`` existed lack the key; their models had
    separate source and target embeddings (only the output tied to the target)."""
    torch.manual_seed(2)
    old = Transformer(small(share_embeddings=False))
    config = old.config.to_dict()
    del config["share_embeddings"]
    TransformerConfig.from_dict(config)  # accepted
    save_checkpoint(tmp_path / "checkpoint.safetensors", old, config)
    trained = load_trained(tmp_path)
    assert trained.model.config.share_embeddings is False
    assert not torch.equal(trained.model.src_embed.weight, trained.model.tgt_embed.weight)
    src, tgt = batch(3)
    torch.testing.assert_close(trained.model(src, tgt), old.eval()(src, tgt), rtol=0, atol=0)


def test_a_config_that_shares_weights_the_file_holds_apart_is_an_error(tmp_path):
    """Loading separate weights into a sharing model would silently keep the last one."""
    old = Transformer(small(share_embeddings=False))
    save_checkpoint(tmp_path / "checkpoint.safetensors", old, old.config.to_dict())
    path = tmp_path / "checkpoint.safetensors"
    tensors = load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["share_embeddings"] = True
    meta["config"] = json.dumps(config)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"src_embed\.weight.*differ in the file"):
        load_trained(tmp_path)
