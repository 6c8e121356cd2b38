"""The chunked LM loss: the same losses and gradients as the plain head, without the (B, T, V) logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vlsa.config import load_config
from vlsa.model.lm_loss import chunked_lm_losses, lm_losses
from vlsa.model.params import apply_stage

B, T, D, V = 3, 11, 16, 50


def _inputs(seed: int = 0, supervised: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, requires_grad=True)
    head = nn.Linear(D, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g) * 0.3)
    labels = torch.randint(V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) > supervised] = -100
    ssft = torch.rand(B, T, generator=g) > 0.5
    return hidden, head, labels, ssft


def _losses_and_grads(fn, hidden, head, labels, ssft):
    losses = fn(hidden, head, labels, ssft)
    hidden.grad, head.weight.grad = None, None
    losses[0].backward()
    return losses, hidden.grad.clone(), head.weight.grad.clone()


def plain(hidden, head, labels, ssft):
    return lm_losses(head(hidden), labels, ssft)


@pytest.mark.parametrize("chunks", [1, 3, 64])  # 64: more pieces than supervised positions, some empty
def test_chunked_loss_equals_the_plain_loss_and_gradients(chunks):
    inputs = _inputs()
    (l0, sft0, ssft0), dh0, dw0 = _losses_and_grads(plain, *inputs)
    chunked = lambda h, m, y, s: chunked_lm_losses(h, m, y, s, chunks)  # noqa: E731
    (l1, sft1, ssft1), dh1, dw1 = _losses_and_grads(chunked, *inputs)
    for a, b in ((l0, l1), (sft0, sft1), (ssft0, ssft1)):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dh1, dh0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dw1, dw0, rtol=1e-5, atol=1e-7)
    assert dh0.abs().sum() > 0 and dw0.abs().sum() > 0


def test_chunked_loss_without_supervised_positions_is_zero_and_keeps_the_graph():
    hidden, head, labels, ssft = _inputs(supervised=0.0)
    loss, sft, ssft_loss = chunked_lm_losses(hidden, head, labels, ssft, 4)
    assert float(loss.detach()) == 0.0 and sft is None and ssft_loss is None
    loss.backward()
    assert head.weight.grad is not None and not head.weight.grad.any()  # every rank still gets a gradient
    assert chunked_lm_losses(hidden, head, None, ssft, 4) == (None, None, None)


def test_head_runs_on_pieces_of_the_supervised_positions_only():
    hidden, head, labels, ssft = _inputs()
    shapes = []
    head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    chunked_lm_losses(hidden, head, labels, ssft, 4)[0].backward()
    n = int((labels[:, 1:] != -100).sum())
    assert len(shapes) == 8  # 4 pieces in the forward pass, recomputed once each in the backward pass
    assert sum(s[0] for s in shapes) == 2 * n and max(s[0] for s in shapes) == -(-n // 4)
    shapes.clear()
    plain(hidden, head, labels, ssft)
    assert shapes == [(B, T, V)]


def test_the_model_trains_the_same_with_the_chunked_loss(tiny_model, two_image_batch):
    models = {}
    for chunks in (0, 5):
        model = copy.deepcopy(tiny_model).train()
        model.config = copy.deepcopy(model.config)
        model.config.llm.loss_chunks = chunks
        apply_stage(model, load_config("tiny").train.stages[1])  # everything trainable
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            out = model(**two_image_batch)
        out.loss.backward()
        models[chunks] = (model, out)
    (plain_model, plain_out), (chunked_model, chunked_out) = models[0], models[5]
    assert plain_out.logits is not None and chunked_out.logits is None
    for key in ("loss", "loss_lm", "loss_rec"):
        torch.testing.assert_close(getattr(chunked_out, key), getattr(plain_out, key), rtol=1e-5, atol=1e-6)
    grads = dict(plain_model.named_parameters())
    for name, p in chunked_model.named_parameters():
        if grads[name].grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
