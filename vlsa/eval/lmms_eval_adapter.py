"""Run an exported VLSA model under lmms-eval (an optional dependency: ``requirements-lmms-eval.txt``).

The package registers model ``vlsa`` with lmms-eval through the ``lmms_eval.models`` entry point
(``pyproject.toml``), so once both are installed (README, "Evaluation")::

    python -m vlsa.eval.lmms_eval_run --model vlsa --model_args pretrained=/path/to/export,template=vicuna_v1 \\
        --tasks mme,pope --batch_size 8 --output_path results/

(``python -m lmms_eval`` takes the same arguments, but exits 0 when the evaluation fails.)
``template``, ``max_new_tokens`` (default budget when a task gives none), ``batch_size``, ``device``
and ``config`` (the run's preset, for a training checkpoint) are the model arguments; ``batch_size``
and ``device`` may come from the CLI's own ``--batch_size`` / ``--device`` instead.

Requests, as lmms-eval 0.7.3 makes them:

- ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``. Decoding is greedy
  whatever a task asks (temperature 0, as the paper); ``max_new_tokens`` is the budget and ``until``
  strings cut the answer.
- ``loglikelihood``: ``(context, continuation, doc_to_visual, doc_id, task, split)``, where the
  continuation may be ``doc_to_target`` (a callable), and the unconditional ``("", continuation)``
  pair that multiple-choice tasks add for ``acc_mutual_info``. The answer is lmms-eval's convention
  for multimodal models (its LLaVA, Qwen-VL, ... models): the *mean negative* log-likelihood per
  continuation token, which its multiple-choice scoring ranks with ``argmin``. It is wrapped in
  lmms-eval's ``GenerationResult``: a bare tuple would be turned into its string.

Several processes (``accelerate launch`` / ``torchrun``): lmms-eval itself gives each rank its share of
the documents and gathers the results on rank 0; the model takes its rank from the environment and
goes on ``cuda:LOCAL_RANK`` (CPU without CUDA). lmms-eval is imported only when the adapter class is
used, so this module imports without it; :class:`VLSAEvalModel` holds all the model logic.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch

from vlsa.config import load_config
from vlsa.eval.infer import Answerer, batches, load_model, model_id_of, pack_images, user_text
from vlsa.io.records import Turn, USER
from vlsa.tokens import IGNORE_INDEX

MODEL_NAME = "vlsa"
CLASS_PATH = f"{__name__}.VLSALmms"
REQUIREMENTS = "requirements-lmms-eval.txt"
LMMS_EVAL_VERSION = "0.7.3"
# The CLI passes these to every model; they may also be given in --model_args.
CLI_MODEL_ARGS = ("batch_size", "max_batch_size", "device")


def require_lmms_eval():
    """The ``lmms_eval`` package, or an ImportError that says how to install it."""
    try:
        import lmms_eval  # noqa: F401
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(
            f"the lmms-eval adapter needs lmms-eval, which is not installed ({err}); install it with "
            f"`pip install -r {REQUIREMENTS}` and `pip install --no-deps lmms-eval=={LMMS_EVAL_VERSION}` "
            "(README, Evaluation; `make lmms-venv` does both)"
        ) from err
    return lmms


# ------------------------------------------------------------------------------------------ arguments


def merge_model_args(model_args: Mapping[str, Any], cli: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the model: ``--model_args`` first, the CLI's ``batch_size``/``device`` where
    they are not given there (lmms-eval would pass both and fail on the repeated keyword)."""
    merged = dict(model_args)
    for key, value in cli.items():
        if value is not None and key not in merged:
            merged[key] = value
    return merged


def parse_batch_size(value: Any) -> int:
    """A fixed batch size (lmms-eval's ``auto`` search is not supported)."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (auto is not supported), got {value!r}")
    return int(text)


def placement(device: str = "", env: Mapping[str, str] | None = None) -> tuple[str, int, int]:
    """(device, rank, world size) of this process: ``cuda:LOCAL_RANK`` when several processes share a
    machine (a bare ``cuda`` too), ``device`` as given otherwise, CUDA when present and none is given."""
    env = os.environ if env is None else env
    rank, world, local = (int(env.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    return device, rank, world


# ------------------------------------------------------------------------------------------ requests


def loglikelihood_parts(args: tuple, doc_of: Callable[[str, str, int], dict]) -> tuple[str, str, list]:
    """(context, continuation, images) of a loglikelihood request: the 6-tuple of a task's document,
    or the unconditional ``(context, continuation)`` pair (no document, no image)."""
    if len(args) == 2:
        context, continuation = args
        return context, continuation, []
    context, target, doc_to_visual, doc_id, task, split = args
    doc = doc_of(task, split, doc_id)
    continuation = target if isinstance(target, str) else target(doc)
    return context, continuation, _images(doc_to_visual(doc))


def lmms_loglikelihood(logp: float, tokens: int, greedy: bool) -> tuple[float, bool]:
    """lmms-eval's answer to a loglikelihood request: (mean negative log-likelihood per token, greedy)."""
    return -logp / tokens, greedy


def by_kwargs(args: list[tuple]) -> list[tuple[dict, list[tuple]]]:
    """Consecutive requests with equal generation kwargs, in order (so answers keep request order)."""
    groups: list[tuple[dict, list[tuple]]] = []
    for a in args:
        if groups and groups[-1][0] == a[1]:
            groups[-1][1].append(a)
        else:
            groups.append((a[1], [a]))
    return groups


def _images(visuals) -> list:
    """The PIL images among a document's visuals (videos and audio are not supported)."""
    from PIL import Image

    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    return [v.convert("RGB") for v in items if isinstance(v, Image.Image)]


def _cut_at(text: str, until: list[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


# ------------------------------------------------------------------------------------------ the model


class VLSAEvalModel:
    """The model side of the adapter: batched greedy generation and batched log-likelihoods with images."""

    def __init__(self, pretrained: str, template: str = "vicuna_v1", max_new_tokens: int = 128, batch_size: int = 1,
                 device: str = "", config: str = "tiny") -> None:
        self.batch_size = parse_batch_size(batch_size)
        model = load_model(pretrained, load_config(config), device=device)
        self.answerer = Answerer(model, template=template, max_new_tokens=int(max_new_tokens),
                                 model_id=model_id_of(pretrained))

    @property
    def device(self) -> torch.device:
        return self.answerer.device

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

    def loglikelihood(self, context: str, continuation: str, images: list) -> tuple[float, bool]:
        """(sum of log-probabilities of ``continuation`` after the prompt, whether greedy decoding gives it)."""
        logp, _, greedy = self.loglikelihoods([(context, continuation, images)])[0]
        return logp, greedy

    def loglikelihoods(self, items: list[tuple[str, str, list]]) -> list[tuple[float, int, bool]]:
        """(sum of log-probabilities, continuation tokens, greedy) of each (context, continuation, images),
        ``batch_size`` items per forward pass."""
        return [score for chunk in batches(items, self.batch_size) for score in self._score_batch(chunk)]

    def _ids(self, context: str, continuation: str, images: list) -> tuple[list[int], list[int]]:
        tok = self.answerer.tokenizer
        prompt_ids = tok(self.answerer.prompt(self._turns(context, images)), add_special_tokens=False).input_ids
        cont_ids = tok(continuation, add_special_tokens=False).input_ids
        if not cont_ids:
            raise ValueError(f"continuation {continuation!r} has no tokens")
        return prompt_ids, cont_ids

    @torch.no_grad()
    def _score_batch(self, items: list[tuple[str, str, list]]) -> list[tuple[float, int, bool]]:
        a, device = self.answerer, self.answerer.device
        pieces = [self._ids(*item) for item in items]
        width = max(len(p) + len(c) for p, c in pieces)
        pad = a.tokenizer.pad_token_id or 0
        ids = torch.full((len(items), width), pad, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros_like(ids)  # (B, T)
        labels = torch.full_like(ids, IGNORE_INDEX)  # (B, T): the continuation only
        for b, (p, c) in enumerate(pieces):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            mask[b, : len(p) + len(c)] = 1
            labels[b, len(p): len(p) + len(c)] = torch.tensor(c)
        flat = [image for _, _, per in items for image in per]
        encoder = a.model.encoder()
        pixels = {k: v.to(device) for k, v in pack_images([encoder(im) for im in flat], flat).items()} if flat else {}
        counts = torch.tensor([len(per) for _, _, per in items], device=device)
        spliced, _ = a.model.prepare_inputs(ids.to(device), mask.to(device), counts, labels=labels.to(device),
                                            **pixels)
        hidden = a.model.language_model.base_model(inputs_embeds=spliced.inputs_embeds,
                                                   attention_mask=spliced.attention_mask,
                                                   use_cache=False).last_hidden_state  # (B, T', D)
        target = spliced.labels[:, 1:]  # (B, T'-1): position t predicts token t+1
        scored = target != IGNORE_INDEX
        # the head only at scored positions: a (B, T', V) logits tensor would be large for real vocabularies
        logp = torch.log_softmax(a.model.language_model.get_output_embeddings()(hidden[:, :-1][scored]).float(), -1)
        chosen = target[scored]  # (n,)
        token_logp = logp.gather(1, chosen[:, None])[:, 0]  # (n,)
        hits = logp.argmax(-1) == chosen  # (n,)
        row = scored.nonzero()[:, 0]  # (n,): the item of each scored token
        out = []
        for b in range(len(items)):
            mine = row == b
            out.append((float(token_logp[mine].sum()), int(mine.sum()), bool(hits[mine].all())))
        return out


def _build_class():
    lmms = require_lmms_eval()
    from lmms_eval.api.instance import GenerationResult

    class VLSALmms(lmms):
        """lmms-eval model ``vlsa``: an exported VLSA model (``pretrained=`` folder or ``s3://`` prefix)."""

        is_simple = True

        def __init__(self, pretrained: str, template: str = "vicuna_v1", max_new_tokens: int = 128,
                     batch_size: int | str = 1, device: str | None = None, config: str = "tiny",
                     max_batch_size: int | None = None) -> None:
            super().__init__()
            device, self._rank, self._world_size = placement(device or "")
            if device.startswith("cuda:"):
                torch.cuda.set_device(device)
            self.core = VLSAEvalModel(pretrained, template, max_new_tokens, batch_size, device, config)
            self.batch_size_per_gpu = self.core.batch_size

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            from lmms_eval.utils import simple_parse_args_string

            return cls(**merge_model_args(simple_parse_args_string(arg_string), additional_config or {}))

        @property
        def device(self) -> torch.device:
            return self.core.device

        def _doc(self, task: str, split: str, doc_id: int) -> dict:
            return self.task_dict[task][split][doc_id]

        def generate_until(self, requests) -> list[str]:
            out: list[str] = []
            for chunk in batches([r.args for r in requests], self.core.batch_size):
                for gen_kwargs, group in by_kwargs(chunk):
                    images = [_images(a[2](self._doc(a[4], a[5], a[3]))) for a in group]
                    out.extend(self.core.generate([a[0] for a in group], images, gen_kwargs))
            return out

        def loglikelihood(self, requests) -> list:
            items = [loglikelihood_parts(r.args, self._doc) for r in requests]
            return [GenerationResult(text=lmms_loglikelihood(*score)) for score in self.core.loglikelihoods(items)]

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError("the vlsa adapter answers single-round tasks only")

    return VLSALmms


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
