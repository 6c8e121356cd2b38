"""The export command: a checkpoint in, a folder with its model card out; only inference parts are built, an
exported folder holds no training-only tensor, and a format the processor cannot match is refused up front."""

from __future__ import annotations

import json

import pytest
from export_helpers import overrides
from safetensors import safe_open

from vlsa.config import ConfigError, load_config
from vlsa.export.__main__ import main as export_main
from vlsa.export.checkpoint import load_checkpoint_model
from vlsa.model.export_hf import resolve_format
from vlsa.train.checkpoint import WEIGHTS

TRAINING_ONLY = ("recon_head", "denoiser", "vae", "epigone", "vq", "ross", "transformer_blocks", "decoder.")
"""Name parts of the training-only tensors (the reconstruction head holds Epigone, the SD3 denoiser and the VAE)."""


def tensor_names(folder) -> list[str]:
    names = []
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            names += list(f.keys())
    return names


@pytest.mark.parametrize("kind", ["vlsa", "llava", "llava_next"])
def test_an_export_holds_no_training_only_tensor(kind, trained):
    run = trained(kind)
    in_checkpoint = tensor_names(run.checkpoint)
    assert any(n.startswith("recon_head.") for n in in_checkpoint)  # trained with the head: it could leak
    exported = tensor_names(run.out)
    leaked = [n for n in exported if any(part in n.lower() for part in TRAINING_ONLY)]
    assert exported and not leaked
    kept = sum(p.numel() for n, p in run.model.named_parameters() if not n.startswith("recon_head."))
    with_head = sum(p.numel() for p in run.model.parameters())
    assert kept < with_head
    folder_values = 0
    for path in run.out.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            folder_values += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert folder_values == kept  # the inference parts, all of them, once


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_the_folder_has_a_model_card_and_its_provenance(trained):
    run = trained("llava_next")
    card = (run.out / "README.md").read_text()
    assert "LlavaNextForConditionalGeneration" in card and "stage2" in card and "step 12" in card
    assert "| stage1 |" in card and "| stage2 |" in card and "vicuna_v1" in card
    info = json.loads((run.out / "vlsa_export.json").read_text())
    assert info["format"] == "llava_next" and info["card"]["checkpoint"] == str(run.checkpoint)
    assert not info["model"]["recon"]["enabled"]
    assert run.summary == {"out": str(run.out), "format": "llava_next", "checkpoint": str(run.checkpoint),
                           "stage": "stage2", "step": 12}


def test_a_run_folder_exports_its_newest_stage_end_checkpoint_with_metrics(trained, tmp_path):
    run = trained("vlsa")
    (run.checkpoint / "manifest.json").write_text(json.dumps({
        "format": 2, "stage_index": 1, "stage": "stage2", "step": 12, "final": True,
        "files": {WEIGHTS: {"size": (run.checkpoint / WEIGHTS).stat().st_size, "sha256": ""}}}))
    metrics = tmp_path / "scores.json"
    metrics.write_text(json.dumps({"pope/accuracy": 0.5}))
    out = tmp_path / "from-run"
    summary = export_main(["--checkpoint", str(run.checkpoint.parent), "--out", str(out), "--metrics", str(metrics),
                           "--commit", "abc123", *overrides("vlsa", run.cfg.model.cache_dir)])
    assert summary["checkpoint"] == str(run.checkpoint)
    card = (out / "README.md").read_text()
    assert "| pope/accuracy | 0.5 |" in card and "`abc123`" in card


def test_the_checkpoint_is_read_without_building_the_training_only_parts(trained):
    run = trained("vlsa")
    # the VAE, denoiser and VQ-VAE point at folders that do not exist: building any of them would fail
    missing = [f"model.recon.{p}.path=/nonexistent/{p}" for p in ("vae", "denoiser")]
    missing.append("model.vq.path=/nonexistent/vq")
    cfg = run.cfg.with_overrides(missing)
    model = load_checkpoint_model(str(run.checkpoint), cfg)
    assert model.recon_head is None and not model.config.recon.enabled
    assert not [n for n, _ in model.named_parameters() if n.startswith("recon_head")]
    full = run.model.state_dict()
    assert all((full[k] == v).all() for k, v in model.state_dict().items())


def test_a_format_the_processor_cannot_match_is_refused_before_loading(tmp_path):
    args = ["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--format", "llava",
            "model.projector.type=mlp2x_gelu"]  # the canvas view: LLaVA's processor cannot pad bottom/right
    with pytest.raises(ConfigError, match="cannot be exported as 'llava'"):
        export_main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("overrides_", "expected"), [
    ([], "vlsa"),
    (["model.projector.type=mlp2x_gelu", "model.encoding.lowres_view=square_pad"], "llava"),
    (["model.projector.type=mlp2x_gelu"], "package"),  # the canvas view: no transformers processor gives it
    (["model.projector.type=anyres"], "llava_next"),
    (["model.projector.type=hd_grid"], "package"),
    (["model.projector.type=qformer"], "package"),
])
def test_auto_picks_the_format_of_the_projector(overrides_, expected):
    model = load_config("tiny", overrides_).model
    assert resolve_format(model, "auto") == expected
    assert resolve_format(model, "package") == "package"
    with pytest.raises(ConfigError):
        resolve_format(model, "llava_next" if expected != "llava_next" else "vlsa")
