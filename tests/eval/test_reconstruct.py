"""Fig. 4 reconstructions: the metrics against hand-computed values, the grid, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlsa.model import weights
from vlsa.eval.reconstruct import gaussian_window, image_metrics, main, psnr, reconstruction_grid, ssim


def _images(demo, n: int) -> list[Image.Image]:
    from pathlib import Path

    files = sorted(Path(demo.image_root, "eval").iterdir())[:n]
    return [Image.open(f).convert("RGB") for f in files]


def test_psnr_and_ssim_of_an_image_against_itself_and_against_noise():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=gen)
    noise = torch.rand(2, 3, 32, 32, generator=gen)
    assert torch.isinf(psnr(image, image)).all() and psnr(image, image).gt(0).all()
    assert torch.allclose(ssim(image, image), torch.ones(2, dtype=torch.float64))
    assert (psnr(image, noise) < 10).all()  # two uniform images: mse = 1/6 -> 7.8 dB
    assert (ssim(image, noise).abs() < 0.1).all()
    slightly = (image + 0.01 * torch.randn(image.shape, generator=gen)).clamp(0, 1)
    assert (psnr(image, slightly) > 35).all() and (ssim(image, slightly) > 0.9).all()


def test_metrics_match_hand_computed_values():
    a, b = torch.zeros(3, 16, 16), torch.full((3, 16, 16), 0.1)
    assert psnr(a, b).item() == pytest.approx(20.0)  # mse 0.01 -> 10 * log10(1 / 0.01)
    # flat images have no variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    a, b = torch.full((3, 16, 16), 0.2), torch.full((3, 16, 16), 0.6)
    c1 = 0.01**2
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    window = gaussian_window(11, 1.5)
    assert window.shape == (11, 11) and window.sum().item() == pytest.approx(1.0)
    assert window[5, 5] == window.max() and torch.equal(window, window.T)


def test_image_metrics_work_in_minus_one_to_one():
    x = torch.linspace(-1, 1, 3 * 8 * 8).view(1, 3, 8, 8)
    metrics = image_metrics(x, -x)
    assert metrics["images"] == 1 and metrics["psnr"] < 5 and metrics["ssim"] < 0
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4))


def test_reconstruction_grid_of_the_tiny_model(tiny_model, demo):
    images = _images(demo, 3)
    grid, metrics = reconstruction_grid(tiny_model, images, steps=2, seed=0)
    side = tiny_model.recon_head.image_size * math.ceil(128 / tiny_model.recon_head.image_size)
    assert grid.size == (2 * side + 3 * 4, 3 * side + 4 * 4)
    assert metrics["images"] == 3 and len(metrics["psnr_per_image"]) == 3 and metrics["steps"] == 2
    assert 0 < metrics["psnr"] < 40 and -1 <= metrics["ssim"] < 0.9  # an untrained model reconstructs noise
    again = reconstruction_grid(tiny_model, images, steps=2, seed=0)
    other = reconstruction_grid(tiny_model, images, steps=2, seed=1)
    assert np.array_equal(np.asarray(grid), np.asarray(again[0])) and again[1]["psnr"] == metrics["psnr"]
    assert not np.array_equal(np.asarray(grid), np.asarray(other[0]))
    assert not tiny_model.training


def test_cli_writes_grid_and_metrics_from_a_checkpoint(tiny_model, demo, cache_dir, tmp_path, capsys):
    checkpoint = tmp_path / "00_stage1_step00000002"
    checkpoint.mkdir()
    weights.save(tiny_model.state_dict(), checkpoint / "model.safetensors")  # what a stage-end checkpoint holds
    out = tmp_path / "recon"
    code = main(["--checkpoint", str(checkpoint), "--images", str(demo.image_root) + "/eval", "--out", str(out),
                 "--steps", "2", "--limit", "2", f"model.cache_dir={cache_dir}"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "metrics.json").read_text())
    assert printed["images"] == 2 == len(written["files"]) and printed["psnr"] == written["psnr"]
    with Image.open(out / "reconstruction.png") as grid:
        cell = tiny_model.recon_head.image_size * math.ceil(128 / tiny_model.recon_head.image_size)
        assert grid.size == (2 * cell + 3 * 4, 2 * cell + 3 * 4)  # two rows of input | reconstruction


def test_exported_models_have_no_reconstruction_head(exported_model, demo, cache_dir):
    from vlsa import load_config
    from vlsa.eval.infer import load_model

    model = load_model(exported_model, load_config("tiny", [f"model.cache_dir={cache_dir}"]), device="cpu")
    with pytest.raises(ValueError, match="no reconstruction head"):
        reconstruction_grid(model, _images(demo, 1), steps=1)
