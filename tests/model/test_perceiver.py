"""SA-Perceiver against a direct transcription of Eq. 1-2 (ARCHITECTURE.md section 3) and App. B.3 shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlsa.model.perceiver import SAPerceiver


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def attention_by_hand(q, k, v, heads, key_mask=None):
    """softmax(Q K^T / sqrt(d_h)) V, one head and one batch row at a time."""
    b, t, d = q.shape
    dh = d // heads
    out = torch.zeros_like(q)
    for i in range(b):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[i, :, cols] @ k[i, :, cols].T / math.sqrt(dh)  # (t, s)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask[i][None, :], float("-inf"))
            out[i, :, cols] = torch.softmax(scores, dim=-1) @ v[i, :, cols]
    return out


def reference(p: SAPerceiver, v_lo, v_hi, heads, hi_mask=None):
    """Eq. 1-2: V'_Lo = [V_Lo; q]; cross-attention with shared w_kv; self-attention with only w_k; split."""
    l = v_lo.shape[1]
    x = torch.cat([v_lo, p.query.expand(v_lo.shape[0], 1, -1)], dim=1)
    kv = linear(v_hi, p.w_kv)
    x = F.silu(linear(attention_by_hand(linear(x, p.w_q), kv, kv, heads, hi_mask), p.w_o1)) + x
    y = linear(attention_by_hand(x, linear(x, p.w_k), x, heads), p.w_o2)
    return y[:, :l], y[:, l]


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 9, 32, generator=g), torch.randn(2, 4 * 9, 32, generator=g)


@pytest.mark.parametrize("heads", [1, 4])
def test_matches_equations(inputs, heads):
    torch.manual_seed(1)
    p = SAPerceiver(32, 48, heads=heads)
    v_lo, v_hi = inputs
    V, P = p(v_lo, v_hi)
    V_ref, P_ref = reference(p, v_lo, v_hi, heads)
    assert V.shape == (2, 9, 48) and P.shape == (2, 48)
    torch.testing.assert_close(V, V_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(P, P_ref, rtol=1e-5, atol=1e-5)


def test_padded_tiles_are_ignored(inputs):
    torch.manual_seed(2)
    p = SAPerceiver(32, 48, heads=4)
    v_lo, v_hi = inputs
    mask = torch.ones(2, 36, dtype=torch.bool)
    mask[1, 18:] = False  # the second image has 2 real tiles of 4
    V, P = p(v_lo, v_hi, mask)
    torch.testing.assert_close(V, reference(p, v_lo, v_hi, 4, mask)[0], rtol=1e-5, atol=1e-5)
    V_short, P_short = p(v_lo[1:], v_hi[1:, :18])
    torch.testing.assert_close(V[1:], V_short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(P[1:], P_short, rtol=1e-5, atol=1e-5)


def test_parameter_shapes_of_appendix_b3():
    """Four 1024x1024 layers, one 1024x4096 layer and the 1x1024 query (torch stores (out, in))."""
    p = SAPerceiver(1024, 4096, heads=16)
    shapes = {name: tuple(t.shape) for name, t in p.named_parameters() if name.endswith("weight") or name == "query"}
    assert shapes == {
        "query": (1, 1024),
        "w_q.weight": (1024, 1024),
        "w_kv.weight": (1024, 1024),
        "w_o1.weight": (1024, 1024),
        "w_k.weight": (1024, 1024),
        "w_o2.weight": (4096, 1024),
    }


def test_ablation_switches(inputs):
    v_lo, v_hi = inputs
    ex1 = SAPerceiver(32, 48, heads=4, self_attention=False)
    assert not hasattr(ex1, "w_k")
    x = torch.cat([v_lo, ex1.query.expand(2, 1, -1)], dim=1)
    kv = linear(v_hi, ex1.w_kv)
    x = F.silu(linear(attention_by_hand(linear(x, ex1.w_q), kv, kv, 4), ex1.w_o1)) + x
    torch.testing.assert_close(ex1(v_lo, v_hi)[0], linear(x, ex1.w_o2)[:, :9], rtol=1e-5, atol=1e-5)

    ex2 = SAPerceiver(32, 48, heads=4, full_projections=True)
    assert {"w_v1", "w_q2", "w_v2"} <= {name for name, _ in ex2.named_children()}

    ex3 = SAPerceiver(32, 48, heads=4, global_embedding="pool")
    assert not hasattr(ex3, "query")
    V, P = ex3(v_lo, v_hi)
    assert V.shape == (2, 9, 48)
    torch.testing.assert_close(P, V.mean(dim=1))


def test_bad_shapes_name_the_values(inputs):
    p = SAPerceiver(32, 48, heads=4)
    v_lo, v_hi = inputs
    with pytest.raises(ValueError, match="width 32 expected, got v_lo 16"):
        p(v_lo[..., :16], v_hi)
    with pytest.raises(ValueError, match="not a multiple of l=9"):
        p(v_lo, v_hi[:, :10])
    with pytest.raises(ValueError, match="not divisible by heads 5"):
        SAPerceiver(32, 48, heads=5)


def test_identity_key_init_keeps_the_tokens_apart_where_a_random_one_averages_them():
    torch.manual_seed(0)
    v_lo, v_hi = torch.randn(2, 16, 64), torch.randn(2, 64, 64)
    identity, default = SAPerceiver(64, 32, heads=1, key_init="identity"), SAPerceiver(64, 32, heads=1)
    assert torch.equal(identity.w_k.weight, torch.eye(64)) and not torch.equal(default.w_k.weight, torch.eye(64))

    def self_weight(p: SAPerceiver) -> float:
        x = torch.cat([v_lo, p.query.expand(2, 1, -1)], dim=1)
        scores = torch.softmax(x @ p.w_k(x).transpose(1, 2) / 8, dim=-1)  # one head: d_h = 64
        return float(scores.diagonal(dim1=1, dim2=2).mean())

    assert self_weight(identity) > 0.9 > 0.2 > self_weight(default)
    out, _ = identity(v_lo, v_hi)
    torch.testing.assert_close(out, reference(identity, v_lo, v_hi, heads=1)[0])  # still Eq. 1-2
