"""The model's output shows its tensors to DeepSpeed's ZeRO-3 module hooks and reads like a dataclass.

ZeRO-3 hooks every module's output tensors to run the module's bookkeeping before its backward pass;
it finds them only inside tuples, lists and dicts, so ``VLSAOutput`` is a ``ModelOutput``.
"""

from __future__ import annotations

import torch

from vlsa.model.deepspeed_cpu import import_deepspeed
from vlsa.model.vlm import VLSAOutput


def test_deepspeed_reaches_every_tensor_of_the_output_and_the_caller_reads_what_it_hooked():
    import_deepspeed()
    from deepspeed.runtime.zero.utils import apply_to_tensors_only

    weight, lm, logits = torch.tensor(2.0, requires_grad=True), torch.tensor(1.5), torch.zeros(1, 3, 5)
    out = VLSAOutput(weight * 1, lm, None, None, lm, None, logits)
    made = []

    def hook(t: torch.Tensor) -> torch.Tensor:  # stands for ZeRO-3's pre-backward function
        made.append(t * 1)
        return made[-1]

    hooked = apply_to_tensors_only(hook, out)
    assert len(made) == 4  # loss, loss_lm, loss_lm_sft, logits (the parts that are off are None)
    assert hooked.loss is made[0] and hooked.logits is made[-1]  # attribute access sees the hooked tensors
    hooked.loss.backward()
    assert weight.grad == 1.0


def test_the_output_reads_by_attribute_with_none_for_the_parts_that_are_off():
    loss = torch.tensor(3.0)
    out = VLSAOutput(loss, loss, None, None, loss, None, None)
    assert out.loss is loss and out.loss_lm is loss and out.loss_lm_sft is loss
    assert out.loss_rec is None and out.loss_vdep is None and out.loss_lm_ssft is None and out.logits is None
    assert VLSAOutput(loss_lm=loss).loss is None
