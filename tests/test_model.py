"""PerceiverAR: causality, mask alignment against an explicit reference, loss, cross-attend dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import randomize_weights
from perceiver_music.model import PerceiverAR, PerceiverARConfig, default_config
from perceiver_music.tokenizer import PAD, VOCAB_SIZE


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> PerceiverARConfig:
    # cross_heads != n_heads: the cross-attend and the stack use different head sizes.
    base = dict(max_context=64, num_latents=16, d_model=32, n_heads=2, cross_heads=4, n_layers=2, dropout=0.0)
    base.update(overrides)
    return PerceiverARConfig(**base)


def random_model(cfg: PerceiverARConfig, seed: int = 0) -> PerceiverAR:
    """A model whose every weight (head and LayerNorms included) is random, so outputs vary."""
    torch.manual_seed(seed)
    return randomize_weights(PerceiverAR(cfg)).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (batch, length), generator=g)


# ---- a straightforward reference: explicit position masks, einsum attention, own RoPE ----------


def _ref_rope(t: torch.Tensor, pos: torch.Tensor, cfg: PerceiverARConfig) -> torch.Tensor:
    hd = t.shape[-1]
    r = max(2, int(hd * cfg.rope_fraction) // 2 * 2)
    inv = cfg.rope_base ** -(torch.arange(0, r, 2, dtype=torch.float64, device=pos.device) / r)
    ang = pos[..., None].double() * inv  # (B, L, r/2)
    cos, sin = ang.cos().float()[:, :, None], ang.sin().float()[:, :, None]
    a, b = t[..., : r // 2], t[..., r // 2 : r]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, t[..., r:]), dim=-1)


def _ref_attention(q, k, v, allowed: torch.Tensor, linear: bool) -> torch.Tensor:
    """q (B, Lq, H, hd), k/v (B, Lk, H, hd), allowed (B, Lq, Lk) bool -> (B, Lq, H * hd)."""
    if linear:
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        w = torch.einsum("bqhd,bkhd->bhqk", fq, fk) * allowed[:, None]
        w = w / w.sum(-1, keepdim=True)
    else:
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        w = s.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    return torch.einsum("bhqk,bkhd->bqhd", w, v).flatten(2)


def reference_logits(model: PerceiverAR, ids: torch.Tensor, n: int, kv_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the last n positions; input i is visible to latent at position p iff i <= p."""
    cfg, B, T = model.config, ids.shape[0], ids.shape[1]
    linear = cfg.attention == "linear"
    x = model.tok_emb.weight[ids]
    lat_pos = torch.arange(T - n, T, device=ids.device).expand(B, n)
    kv_pos = torch.arange(T, device=ids.device).expand(B, T) if kv_pos is None else kv_pos
    inputs = torch.gather(x, 1, kv_pos[..., None].expand(-1, -1, cfg.d_model))
    lat = x[:, T - n :]

    c, H = model.cross, cfg.cross_heads
    kv = F.linear(F.layer_norm(inputs, (cfg.d_model,), c.kv_norm.weight, c.kv_norm.bias), c.kv.weight)
    k, v = kv.unflatten(-1, (2 * H, -1)).chunk(2, dim=2)
    q = F.linear(F.layer_norm(lat, (cfg.d_model,), c.q_norm.weight, c.q_norm.bias), c.q.weight).unflatten(-1, (H, -1))
    allowed = kv_pos[:, None, :] <= lat_pos[:, :, None]
    y = _ref_attention(_ref_rope(q, lat_pos, cfg), _ref_rope(k, kv_pos, cfg), v, allowed, linear)
    h = lat + F.linear(y, c.out.weight)
    h = h + c.mlp(c.mlp_norm(h))

    allowed = lat_pos[:, None, :] <= lat_pos[:, :, None]
    for blk in model.blocks:
        H = cfg.n_heads
        q, k, v = blk.qkv(blk.norm1(h)).unflatten(-1, (3 * H, -1)).chunk(3, dim=2)
        y = _ref_attention(_ref_rope(q, lat_pos, cfg), _ref_rope(k, lat_pos, cfg), v, allowed, linear)
        h = h + blk.out(y)
        h = h + blk.mlp(blk.norm2(h))
    return model.head(model.norm(h))


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_matches_explicit_mask_reference(attention):
    model = random_model(tiny_config(attention=attention))
    ids = random_ids(2, 40)
    with torch.no_grad():
        for n in (16, 5, 40):
            got, ref = model(ids, num_latents=n), reference_logits(model, ids, n)
            assert got.shape == (2, n, VOCAB_SIZE)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_reference_can_tell_top_left_from_bottom_right(monkeypatch):
    """Guard for the test above: a top-left aligned mask gives different logits."""
    model = random_model(tiny_config())
    ids = random_ids(1, 40)
    n, T = 16, 40
    with torch.no_grad():
        ref = reference_logits(model, ids, n)
        q_idx, k_idx = torch.arange(n)[:, None], torch.arange(T)[None]
        top_left = (k_idx <= q_idx)[None]  # what is_causal=True would do for Lq != Lk
        orig = torch.nn.functional.scaled_dot_product_attention

        def wrong(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
            if q.shape[-2] == n and k.shape[-2] == T:
                return orig(q, k, v, attn_mask=top_left[None], dropout_p=dropout_p)
            return orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", wrong)
        bad = model(ids, num_latents=n)
    assert (bad - ref).abs().max() > 1e-2


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_future_tokens_never_change_earlier_logits(attention):
    model = random_model(tiny_config(attention=attention))
    T, n = 48, 16
    ids = random_ids(1, T)
    with torch.no_grad():
        base = model(ids)
        for t in (T - n, T - n + 5, T - 1):
            changed = ids.clone()
            changed[0, t] = 3 + (changed[0, t] - 3 + 7) % (VOCAB_SIZE - 3)
            out = model(changed)
            j = t - (T - n)  # latent index of position t
            torch.testing.assert_close(out[:, :j], base[:, :j], atol=1e-6, rtol=0)
            assert (out[:, j:] - base[:, j:]).abs().max() > 1e-4  # the change is seen from t on


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_first_latent_sees_exactly_inputs_up_to_its_position(attention):
    model = random_model(tiny_config(attention=attention))
    T, n = 40, 16
    ids = random_ids(1, T)
    first = T - n
    with torch.no_grad():
        base = model(ids)[:, 0]
        for i in range(T):
            changed = ids.clone()
            changed[0, i] = 3 + (changed[0, i] - 3 + 11) % (VOCAB_SIZE - 3)
            moved = (model(changed)[:, 0] - base).abs().max().item()
            if i <= first:
                assert moved > 1e-5, f"latent 0 (position {first}) does not see input {i}"
            else:
                assert moved < 1e-6, f"latent 0 (position {first}) sees future input {i}"


def test_short_inputs_use_min_n_t_latents_and_long_inputs_are_refused():
    model = random_model(tiny_config())
    with torch.no_grad():
        assert model(random_ids(1, 5)).shape == (1, 5, VOCAB_SIZE)
        assert model(random_ids(1, 1)).shape == (1, 1, VOCAB_SIZE)
        assert model(random_ids(2, 64)).shape == (2, 16, VOCAB_SIZE)
        assert model(random_ids(2, 64), last_only=True).shape == (2, 1, VOCAB_SIZE)
        with pytest.raises(ValueError):
            model(random_ids(1, 65))


def test_loss_is_cross_entropy_on_latents_and_ignores_pad():
    model = random_model(tiny_config())
    ids = random_ids(2, 33)
    ids[1, 25:] = PAD  # right padding
    with torch.no_grad():
        loss, metrics = model.loss(ids)
        logits = model(ids[:, :-1])  # last 16 positions
        targets = ids[:, 1:][:, -16:]
        keep = targets != PAD
        nll = F.cross_entropy(logits[keep], targets[keep])
        z = torch.logsumexp(logits[keep], -1).square().mean()
    assert metrics["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert metrics["z_loss"] == pytest.approx(z.item(), rel=1e-5)
    assert loss.item() == pytest.approx(nll.item() + 1e-4 * z.item(), rel=1e-5)
    all_pad = ids.clone()
    all_pad[:, 1:] = PAD
    pad_loss, pad_metrics = model.loss(all_pad)
    assert pad_loss.item() == 0.0 and pad_metrics["nll"] == 0.0


def test_loss_backward_and_fresh_model_predicts_uniform():
    model = PerceiverAR(tiny_config())
    ids = random_ids(2, 40)
    loss, metrics = model.loss(ids)
    assert metrics["nll"] == pytest.approx(math.log(VOCAB_SIZE), rel=1e-5)  # zero-initialised head
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert model.tok_emb.weight.grad is not None


def test_cross_attend_dropout_only_in_training_and_keeps_positions():
    cfg = tiny_config(cross_attend_dropout=0.5)
    model = random_model(cfg)
    ids = random_ids(2, 64)  # prefix of 48 inputs before the 16 latents
    seen = []
    hook = model.cross.kv_norm.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    captured = {}
    original = model._drop_prefix

    def spy(x, n):
        inputs, kv_pos = original(x, n)
        captured["kv_pos"] = kv_pos
        return inputs, kv_pos

    model._drop_prefix = spy
    with torch.no_grad():
        eval_out = model(ids)
        assert seen[-1] == 64 and "kv_pos" not in captured
        model.train()
        train_out = model(ids)
    hook.remove()
    assert seen[-1] == 24 + 16  # half the prefix dropped physically; every latent kept
    kv_pos = captured["kv_pos"]
    assert kv_pos.shape == (2, 40)
    assert (kv_pos[:, 24:] == torch.arange(48, 64)).all()
    assert (kv_pos[:, :24].diff(dim=1) > 0).all() and (kv_pos[:, :24] < 48).all()
    assert not torch.equal(kv_pos[0], kv_pos[1])  # each row drops its own subset
    # The training forward is exactly the reference over the kept inputs at their own positions.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(train_out, reference_logits(model, ids, 16, kv_pos), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(eval_out, model(ids))
    assert (train_out - eval_out).abs().max() > 1e-4


def test_config_round_trip_and_validation():
    cfg = tiny_config(attention="linear", cross_attend_dropout=0.25)
    assert PerceiverARConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        PerceiverARConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        tiny_config(attention="sparse")
    with pytest.raises(ValueError):
        tiny_config(num_latents=65)


def test_default_config_size():
    cfg = default_config()
    params = PerceiverAR(cfg).num_parameters()
    assert 10e6 <= params <= 25e6
    assert cfg.vocab_size == VOCAB_SIZE and cfg.attention == "softmax"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_cuda_kernels_match_the_reference(attention):
    """On CUDA, causal_lower_right dispatches to flash / memory-efficient kernels."""
    model = random_model(tiny_config(attention=attention)).cuda()
    ids = random_ids(2, 64).cuda()
    with torch.no_grad():
        for n in (16, 64):
            torch.testing.assert_close(model(ids, num_latents=n), reference_logits(model, ids, n), atol=2e-3, rtol=2e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(ids).float()
        full = model(ids)
        assert (half - full).abs().max() < 0.05 * full.abs().max() + 0.1
        model.train()
        loss, _ = model.loss(ids)
        loss.backward()
