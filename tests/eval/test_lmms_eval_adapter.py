"""The lmms-eval adapter: clear error without lmms-eval, its entry point, and the model side it wraps."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

import vlsa.eval.lmms_eval_adapter as adapter

ROOT = Path(__file__).resolve().parents[2]
HAS_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None


@pytest.mark.skipif(HAS_LMMS_EVAL, reason="lmms-eval is installed")
def test_module_imports_without_lmms_eval_and_says_how_to_install_it():
    with pytest.raises(ImportError, match=r"pip install -r requirements-lmms-eval\.txt"):
        adapter.VLSALmms  # noqa: B018 - building the class needs lmms-eval
    with pytest.raises(ImportError, match="lmms-eval"):
        adapter.manifest()
    with pytest.raises(AttributeError):
        adapter.NoSuchName  # noqa: B018


def test_entry_point_and_pinned_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["lmms_eval.models"]["vlsa"]
    module, _, attr = target.partition(":")
    assert module == adapter.__name__ and callable(getattr(adapter, attr))
    assert adapter.CLASS_PATH == f"{adapter.__name__}.VLSALmms"
    pins = [line for line in (ROOT / adapter.REQUIREMENTS).read_text().splitlines() if line.startswith("lmms-eval")]
    assert len(pins) == 1 and "==" in pins[0]


def test_model_side_generates_and_scores_continuations(exported_model, demo, cache_dir):
    from PIL import Image

    from vlsa.model.export import export_format

    assert export_format(exported_model) == "vlsa"
    core = adapter.VLSAEvalModel(exported_model, max_new_tokens=3, device="cpu")
    image = Image.open(sorted(Path(demo.image_root, "eval").iterdir())[0]).convert("RGB")
    texts = core.generate(["What color?", "Describe it."], [[image], []], {"max_new_tokens": 2, "until": ["\n"]})
    assert len(texts) == 2 and all(isinstance(t, str) and "\n" not in t for t in texts)
    logp, is_greedy = core.loglikelihood("What color?", " red circle", [image])
    assert logp < 0 and isinstance(is_greedy, bool)
    assert logp == pytest.approx(_forward_logp(core, "What color?", " red circle", image), rel=1e-4)


def _forward_logp(core, context: str, continuation: str, image) -> float:
    """The same log-likelihood through the model's training forward: -(mean token loss) x tokens."""
    import torch

    from vlsa.eval.infer import pack_images

    a, tok = core.answerer, core.answerer.tokenizer
    prompt = tok(a.prompt(core._turns(context, [image])), add_special_tokens=False).input_ids
    cont = tok(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + cont])
    labels = torch.tensor([[-100] * len(prompt) + cont])
    with torch.no_grad():
        out = a.model(ids, torch.ones_like(ids), labels=labels, image_counts=torch.tensor([1]),
                      **pack_images([a.model.encoder()(image)]))
    return -out.loss_lm.item() * len(cont)
