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
    with pytest.raises(ImportError, match=r"pip install -r requirements-lmms-eval\.txt.*--no-deps lmms-eval==0\.7\.3"):
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
    lines = (ROOT / adapter.REQUIREMENTS).read_text().splitlines()
    assert f"# lmms-eval=={adapter.LMMS_EVAL_VERSION} (installed with --no-deps, see above)" in lines
    assert "filelock==3.32.7" in lines  # lmms-eval 0.7.3 imports filelock._api, gone in filelock 4
    assert not any(line.startswith("wandb") for line in lines)  # lmms-eval's wandb pin needs protobuf<7
    makefile = (ROOT / "Makefile").read_text()
    assert f"LMMS_EVAL := lmms-eval=={adapter.LMMS_EVAL_VERSION}" in makefile
    assert "--no-deps $(LMMS_EVAL)" in makefile and adapter.REQUIREMENTS in makefile


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


def test_cli_batch_size_and_device_fill_in_without_clashing():
    cli = {"batch_size": 1, "max_batch_size": None, "device": None}
    assert adapter.merge_model_args({"pretrained": "m", "batch_size": "2"}, cli) == {"pretrained": "m", "batch_size": "2"}
    merged = adapter.merge_model_args({"pretrained": "m", "batch_size": "2", "device": "cpu"}, cli)
    assert merged == {"pretrained": "m", "batch_size": "2", "device": "cpu"}  # model_args win, no repeat
    assert adapter.merge_model_args({"pretrained": "m"}, {"batch_size": "4", "device": "cpu"}) == {
        "pretrained": "m", "batch_size": "4", "device": "cpu"}
    assert adapter.parse_batch_size("3") == 3 and adapter.parse_batch_size(2) == 2
    for bad in ("auto", "auto:4", "0", "-1", "x"):
        with pytest.raises(ValueError, match="batch_size"):
            adapter.parse_batch_size(bad)


def test_each_process_takes_its_rank_and_its_own_gpu():
    assert adapter.placement("cpu", {}) == ("cpu", 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert adapter.placement("cuda", env) == ("cuda:1", 3, 4)
    assert adapter.placement("cuda:0", env) == ("cuda:0", 3, 4)  # an explicit index is kept
    assert adapter.placement("cpu", env) == ("cpu", 3, 4)


def test_loglikelihood_requests_with_and_without_a_document():
    from PIL import Image

    image = Image.new("L", (8, 8))
    docs = {("t", "test", 5): {"answer": " blue", "img": image}}
    doc_of = lambda task, split, doc_id: docs[(task, split, doc_id)]  # noqa: E731
    to_visual = lambda doc: [doc["img"]]  # noqa: E731
    context, cont, images = adapter.loglikelihood_parts(("Q?", " red", to_visual, 5, "t", "test"), doc_of)
    assert (context, cont, len(images), images[0].mode) == ("Q?", " red", 1, "RGB")
    _, cont, _ = adapter.loglikelihood_parts(("Q?", lambda doc: doc["answer"], to_visual, 5, "t", "test"), doc_of)
    assert cont == " blue"  # doc_to_target given as a callable
    assert adapter.loglikelihood_parts(("", "red"), doc_of) == ("", "red", [])  # unconditional (acc_mutual_info)
    # lmms-eval ranks choices with argmin: the answer is the mean negative log-likelihood per token
    assert adapter.lmms_loglikelihood(-6.0, 3, True) == (2.0, True)


def test_generation_requests_group_by_their_kwargs_in_order():
    a, b = {"until": ["\n"]}, {"max_new_tokens": 4}
    reqs = [("q1", a), ("q2", a), ("q3", b), ("q4", a)]
    groups = adapter.by_kwargs(reqs)
    assert [(g, [r[0] for r in rs]) for g, rs in groups] == [(a, ["q1", "q2"]), (b, ["q3"]), (a, ["q4"])]


def test_batched_loglikelihoods_equal_one_at_a_time(exported_model, demo):
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted(Path(demo.image_root, "eval").iterdir())[:2]]
    items = [("What color?", " red circle", [images[0]]), ("", "blue", []),
             ("Count them.", " 3", [images[1]]), ("What is shown?", " two big green squares", [images[0]])]
    single = adapter.VLSAEvalModel(exported_model, device="cpu", batch_size=1).loglikelihoods(items)
    batched = adapter.VLSAEvalModel(exported_model, device="cpu", batch_size=3).loglikelihoods(items)
    assert [n for _, n, _ in batched] == [n for _, n, _ in single] and all(n > 0 for _, n, _ in single)
    assert [g for _, _, g in batched] == [g for _, _, g in single]
    assert [lp for lp, _, _ in batched] == pytest.approx([lp for lp, _, _ in single], rel=1e-4)
    assert len({round(lp, 3) for lp, _, _ in single}) == len(items)  # distinct items, distinct scores


def test_run_wrapper_finds_the_output_path_and_fresh_results(tmp_path):
    from vlsa.eval import lmms_eval_run as run

    assert run.output_path(["--model", "vlsa", "--output_path", "out/x"]) == "out/x"
    assert run.output_path(["--output_path=out/y", "--tasks", "t"]) == "out/y"
    assert run.output_path(["--tasks", "t"]) == ""
    old = tmp_path / "m" / "2026_results.json"
    old.parent.mkdir()
    old.write_text("{}")
    assert run.new_results(str(tmp_path), 0) == [old]
    assert run.new_results(str(tmp_path), old.stat().st_mtime + 10) == []
    assert run.new_results(str(tmp_path / "absent"), 0) == []
