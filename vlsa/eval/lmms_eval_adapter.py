"""Run an exported VLSA model under lmms-eval (an optional dependency: ``requirements-lmms-eval.txt``).

The package registers model ``vlsa`` with lmms-eval through the ``lmms_eval.models`` entry point
(``pyproject.toml``), so once both are installed::

    python -m lmms_eval --model vlsa --model_args pretrained=/path/to/export,template=vicuna_v1 \\
        --tasks mme,pope --batch_size 8

``template``, ``max_new_tokens`` (default budget when a task gives none), ``batch_size``, ``device``
and ``config`` (the run's preset, for a training checkpoint) are the other model arguments.
Decoding is greedy whatever a task asks (temperature 0, as the paper), and a task's ``until``
strings cut the answer. lmms-eval is imported only when the adapter class is used, so this module
imports without it; :class:`VLSAEvalModel` holds all the model logic and needs no lmms-eval.
"""

from __future__ import annotations

from typing import Any

import torch

from vlsa.config import load_config
from vlsa.eval.infer import Answerer, load_model, model_id_of, pack_images, user_text
from vlsa.io.records import Turn, USER
from vlsa.tokens import IGNORE_INDEX

MODEL_NAME = "vlsa"
CLASS_PATH = f"{__name__}.VLSALmms"
REQUIREMENTS = "requirements-lmms-eval.txt"


def require_lmms_eval():
    """The ``lmms_eval`` package, or an ImportError that says how to install it."""
    try:
        import lmms_eval  # noqa: F401
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(
            f"the lmms-eval adapter needs lmms-eval, which is not installed ({err}); install it with "
            f"`pip install -r {REQUIREMENTS}` (the pinned version this adapter is tested with)"
        ) from err
    return lmms


class VLSAEvalModel:
    """The model side of the adapter: batched greedy generation and log-likelihoods with images."""

    def __init__(self, pretrained: str, template: str = "vicuna_v1", max_new_tokens: int = 128, batch_size: int = 1,
                 device: str = "", config: str = "tiny") -> None:
        self.batch_size = int(batch_size)
        model = load_model(pretrained, load_config(config), device=device)
        self.answerer = Answerer(model, template=template, max_new_tokens=int(max_new_tokens),
                                 model_id=model_id_of(pretrained))

    def _turns(self, context: str, images: list) -> list[Turn]:
        text = context if not images else user_text(context, True)
        if images and text.count("<image>") != len(images):  # one placeholder per image, LLaVA-style
            text = "\n".join(["<image>"] * len(images)) + "\n" + text.replace("<image>", "").lstrip()
        return [Turn(USER, text)]

    def generate(self, contexts: list[str], visuals: list[list], gen_kwargs: dict[str, Any]) -> list[str]:
        """Greedy answers to ``contexts`` with their images; ``gen_kwargs`` may set max_new_tokens and until."""
        budget = int(gen_kwargs.get("max_new_tokens") or self.answerer.max_new_tokens)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        texts = self.answerer.answer([self._turns(c, v) for c, v in zip(contexts, visuals)], visuals, budget)
        return [_cut_at(text, until) for text in texts]

    @torch.no_grad()
    def loglikelihood(self, context: str, continuation: str, images: list) -> tuple[float, bool]:
        """(sum of log-probabilities of ``continuation`` after the prompt, whether greedy decoding gives it)."""
        a, tok = self.answerer, self.answerer.tokenizer
        prompt_ids = tok(a.prompt(self._turns(context, images)), add_special_tokens=False).input_ids
        cont_ids = tok(continuation, add_special_tokens=False).input_ids
        if not cont_ids:
            raise ValueError(f"continuation {continuation!r} has no tokens")
        device = a.device
        ids = torch.tensor([prompt_ids + cont_ids], device=device)  # (1, T)
        labels = torch.tensor([[IGNORE_INDEX] * len(prompt_ids) + cont_ids], device=device)  # (1, T)
        views = [a.model.encoder()(im) for im in images]
        pixels = {k: v.to(device) for k, v in pack_images(views, images).items()} if images else {}
        counts = torch.tensor([len(images)], device=device)
        spliced, _ = a.model.prepare_inputs(ids, torch.ones_like(ids), counts, labels=labels, **pixels)
        logits = a.model.language_model(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                        use_cache=False).logits.float()  # (1, T', V)
        target = spliced.labels[0, 1:]
        scored = target != IGNORE_INDEX
        logp = torch.log_softmax(logits[0, :-1], dim=-1)[scored]  # (n, V)
        chosen = target[scored]
        total = logp.gather(1, chosen[:, None]).sum()
        return float(total), bool((logp.argmax(-1) == chosen).all())


def _cut_at(text: str, until: list[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


def _images(visuals) -> list:
    """The PIL images among a document's visuals (videos and audio are not supported)."""
    from PIL import Image

    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    return [v.convert("RGB") for v in items if isinstance(v, Image.Image)]


def _build_class():
    lmms = require_lmms_eval()

    class VLSALmms(lmms):
        """lmms-eval model ``vlsa``: an exported VLSA model (``pretrained=`` folder or ``s3://`` prefix)."""

        is_simple = True

        def __init__(self, pretrained: str, template: str = "vicuna_v1", max_new_tokens: int = 128,
                     batch_size: int = 1, device: str = "", config: str = "tiny", **ignored) -> None:
            super().__init__()
            self.core = VLSAEvalModel(pretrained, template, max_new_tokens, batch_size, device, config)

        def _doc_images(self, doc_to_visual, doc_id, task, split) -> list:
            return _images(doc_to_visual(self.task_dict[task][split][doc_id]))

        def generate_until(self, requests) -> list[str]:
            out: list[str] = []
            size = self.core.batch_size
            for start in range(0, len(requests), size):
                chunk = [r.args for r in requests[start:start + size]]
                for gen_kwargs, group in _by_kwargs(chunk):
                    images = [self._doc_images(*a[2:6]) for a in group]  # doc_to_visual, doc_id, task, split
                    out.extend(self.core.generate([a[0] for a in group], images, gen_kwargs))
            return out

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            results = []
            for context, target, doc_to_visual, doc_id, task, split in (r.args for r in requests):
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                results.append(self.core.loglikelihood(context, continuation, _images(doc_to_visual(doc))))
            return results

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError("the vlsa adapter answers single-round tasks only")

    return VLSALmms


def _by_kwargs(args: list[tuple]) -> list[tuple[dict, list[tuple]]]:
    """Consecutive requests with equal generation kwargs, in order (so answers keep request order)."""
    groups: list[tuple[dict, list[tuple]]] = []
    for a in args:
        if groups and groups[-1][0] == a[1]:
            groups[-1][1].append(a)
        else:
            groups.append((a[1], [a]))
    return groups


_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    # the class derives from lmms-eval's base class, so it exists only once lmms-eval is importable
    global _CLASS
    if name == "VLSALmms":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def manifest():
    """The ``lmms_eval.models`` entry-point payload: model ``vlsa`` -> :data:`CLASS_PATH`."""
    require_lmms_eval()
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)
