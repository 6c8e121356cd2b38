"""Label computation against the real VQModel / AutoencoderKL (tiny configs), without Ray."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from label_helpers import assert_codes_match, good_images, label_config, reference_row
from PIL import Image

from vlsa.data.assemble import pixel_targets
from vlsa.io.image import decode_image
from vlsa.labels.compute import (
    LabelGeometry,
    nearest_codes,
    prepare,
    split_quarters,
    to_unit_range,
)
from vlsa.labels.schema import latent_array, vq_array
from vlsa.model.encoding import recon_pixels
from vlsa.model.geometry import vision_input_side


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(70, 33), (21, 50), (32, 32), (5, 90), (120, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_nearest_codes_equal_the_vq_models_own_quantizer(frozen_models):
    vq, _ = frozen_models
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1  # (B, 3, S, S)
    with torch.no_grad():
        latents = vq.encode(x).latents  # (B, D, 8, 8)
        _, _, (_, _, theirs) = vq.quantize(latents)
    ours = nearest_codes(latents, vq.quantize.embedding.weight)
    assert ours.shape == (3, 8, 8)
    assert torch.equal(ours.flatten(), theirs)
    assert ours.unique().numel() > 1  # not a degenerate codebook: the comparison means something


def test_split_quarters_order_and_row_major_layout():
    grid = torch.arange(2 * 6 * 6).view(2, 6, 6)
    quarters = split_quarters(grid)
    assert quarters.shape == (2, 4, 3, 3)
    for b in range(2):
        assert torch.equal(quarters[b, 0], grid[b, :3, :3])  # upper left
        assert torch.equal(quarters[b, 1], grid[b, :3, 3:])  # upper right
        assert torch.equal(quarters[b, 2], grid[b, 3:, :3])  # lower left
        assert torch.equal(quarters[b, 3], grid[b, 3:, 3:])  # lower right
    with pytest.raises(ValueError, match="5x6"):
        split_quarters(torch.zeros(1, 5, 6, dtype=torch.long))


def test_uint8_transport_restores_the_model_inputs_exactly(label_cfg):
    geometry = LabelGeometry.from_config(label_cfg)
    for image in _images():
        prepared = prepare(image, geometry)
        assert torch.equal(to_unit_range(prepared.vq_rgb[None])[0], recon_pixels(image, 32, pad_multiple=32))
        assert torch.equal(to_unit_range(prepared.vae_rgb[None])[0], recon_pixels(image, 32, pad_multiple=32))


# SHA-256 of the pixel targets (X_Lo, 32 x 32 x 3 uint8) label schema version 1 stored for the corpus's good
# images, computed by that version's labeling code (LabelComputer.label on the decoded image).
STORED_PIXELS_V1 = {
    "cmyk.jpg": "68b6118b8934a69b9d57ffbd892c6cd1e365d38613950a1a11376e200f57efd5",
    "exif_rotated.jpg": "b5d86a1ff07abcbced998736e9dddf53089d23c304935f988f8c5670667ef4f2",
    "gray16.png": "9351a04177902c97532dea5004fbfde22f4cc50be137e7318d0ed7ad196902a3",
    "palette_transparent.png": "e38d2f7b76021249e21c0c67563c993e8ed65d1ac327914abe1efe309a5f0092",
    "rgb_tall.jpg": "44e29bf9fff749bbc408fc7efad0628e1804b517ad411dad471aa425beb7e307",
    "rgb_wide.png": "3e6cf4f2ac3446fe1928cead2cdd750c60268157e75d53b751a970eb67032349",
    "square.png": "d48c54a4b40654fc8a515fb8761bc8a9d3401be5b721fd842fced6916a00a9a4",
}


def test_pixel_targets_recomputed_at_assembly_equal_the_ones_labels_stored(label_cfg):
    side = LabelGeometry.from_config(label_cfg).vision_side
    assert sorted(good_images()) == sorted(STORED_PIXELS_V1)
    for name, data in sorted(good_images().items()):
        rgb = pixel_targets(decode_image(data, label_cfg.label.decode), side)  # what the assembly answers from
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == STORED_PIXELS_V1[name], name


def test_label_rows_equal_direct_model_calls(label_cfg, frozen_models, label_computer):
    vq, vae = frozen_models
    images = _images()
    busy_before = label_computer.model_seconds
    rows = label_computer.label(images)  # batch_size 2: batches of 2, 2, 1
    assert len(rows) == len(images)
    assert label_computer.model_seconds > busy_before  # time inside model calls is counted
    for image, row in zip(images, rows):
        ref = reference_row(label_cfg, vq, vae, image)
        assert (row["width"], row["height"]) == (image.width, image.height)
        assert row["vq_side"] == 4 and len(row["vq_indices"]) == 4
        assert all(len(q) == 16 for q in row["vq_indices"])
        assert_codes_match(vq_array(row), ref, vq.quantize.embedding.weight)
        assert "pixels" not in row  # recomputed at assembly (vlsa.data.assemble.pixel_targets)
        assert row["latent_shape"] == [16, 8, 8]
        np.testing.assert_allclose(latent_array(row), ref["latent"], atol=1e-4, rtol=1e-4)  # batched vs single conv


def test_latent_is_shifted_and_scaled_mean_not_a_sample(frozen_models, label_computer):
    _, vae = frozen_models
    computer = label_computer
    x = to_unit_range(prepare(_images()[0], computer.geometry).vae_rgb[None])
    first, second = computer.vae_latents(x), computer.vae_latents(x)
    assert torch.equal(first, second)  # deterministic
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
    expected = (mean - vae.config.shift_factor) * vae.config.scaling_factor
    assert vae.config.shift_factor != 0 and vae.config.scaling_factor != 1  # the transform is visible
    torch.testing.assert_close(first, expected)


def test_vision_input_side_from_a_saved_vision_config(tmp_path, cache_dir):
    from transformers import CLIPConfig, CLIPVisionConfig

    CLIPVisionConfig(image_size=48, patch_size=8).save_pretrained(tmp_path / "vision")
    CLIPConfig(vision_config={"image_size": 56, "patch_size": 8}).save_pretrained(tmp_path / "clip")
    assert vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'vision'}").model) == 48
    assert vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'clip'}").model) == 56
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="no `image_size`"):
        vision_input_side(label_config(cache_dir, f"model.vision.path={tmp_path / 'bad'}").model)


# ------------------------------------------------------------------------------------------ bf16

BF16_IMAGES = 57
"""Generated JPEGs added to the corpus's 7 good images for the precision tests: 64 images, 4,096 VQ positions,
so one flipped index moves the agreement by 0.024% and the 99% bound allows 40 flips, not 0 or 1."""
BF16_VQ_AGREEMENT = 0.99
"""Share of VQ positions whose index the labels must keep when the VAE runs in bf16 (the VQ-VAE in fp32)."""
BF16_VQ_ENCODER_AGREEMENT = 0.97
"""The same with the VQ-VAE encoder in bf16 too (``label.vq_precision=bf16``): measured 98.24% here (72 of
4,096 flipped), below the 99% goal, whichever single part stays fp32 (``test_bf16_vq_flips_by_encoder_part``).
A briefly trained tiny VQ-VAE, whose latents sit closer to their codes, does not reach it either: 96.95-97.44%
over three training seeds (``test_bf16_vq_encoder_agreement_on_a_briefly_trained_vq_vae``).
``label.vq_precision=fp16`` meets it on both (below)."""
BF16_LATENT_REL_L2 = 0.03
"""Bound on ||z_bf16 - z_fp32|| / ||z_fp32|| over the test images' VAE latents (measured 1.9%)."""
BF16_LATENT_MAX_ABS = 0.25
"""Bound on max |z_bf16 - z_fp32|, in units of the latents' standard deviation (measured 0.16)."""


def _fitted_vq(cfg, images, folder):
    """The tiny VQ-VAE with its codebook fitted to its encoder's latents (k-means, 20 rounds), saved.

    A random-init codebook lies nearly equidistant from every latent (the gap between the nearest
    and second-nearest code is ~0.3% of the distance), so any rounding flips codes; a trained
    VQ-VAE's codes sit among its latents, which k-means reproduces.
    """
    from vlsa.model.builder import build_vq

    vq = build_vq(cfg)
    x = to_unit_range(np.stack([prepare(im, LabelGeometry.from_config(cfg)).vq_rgb for im in images]))
    with torch.no_grad():
        latents = vq.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, vq.config.vq_embed_dim)  # (N, D)
        k = vq.config.num_vq_embeddings
        centers = latents[torch.randperm(len(latents), generator=torch.Generator().manual_seed(0))[:k]].clone()
        for _ in range(20):
            assign = torch.cdist(latents, centers).argmin(dim=1)
            for c in range(k):
                if (assign == c).any():
                    centers[c] = latents[assign == c].mean(dim=0)
        vq.quantize.embedding.weight.copy_(centers)
    vq.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bf16_case(cache_dir, frozen_models, tmp_path_factory):
    """(config with a fitted VQ-VAE, test images, fp32 label rows)."""
    from label_helpers import good_images

    from vlsa.bench.label import jpeg_images
    from vlsa.io.image import decode_image
    from vlsa.labels.compute import LabelComputer

    decode = label_config(cache_dir).label.decode
    images = [decode_image(b, decode) for b in [*good_images().values(), *jpeg_images(BF16_IMAGES, 48, 36)]]
    folder = _fitted_vq(label_config(cache_dir), images, tmp_path_factory.mktemp("fitted") / "vq")
    cfg = label_config(cache_dir, f"model.vq.path={folder}")
    return cfg, images, LabelComputer(cfg, device="cpu", precision="fp32").label(images)


def _vq_agreement(full, half) -> np.ndarray:
    return np.concatenate([(vq_array(a) == vq_array(b)).ravel() for a, b in zip(full, half)])


def test_bf16_vae_stays_within_the_stated_tolerance_of_fp32(bf16_case):
    from vlsa.labels.compute import LabelComputer

    cfg, images, full = bf16_case
    half = LabelComputer(cfg, device="cpu", precision="bf16").label(images)  # label.precision=bf16
    same = _vq_agreement(full, half)
    assert same.size == 4096 and same.mean() >= BF16_VQ_AGREEMENT, (same.mean(), same.size)
    z32, z16 = (np.stack([latent_array(r) for r in rows]) for rows in (full, half))
    assert z16.dtype == np.float32 and not np.array_equal(z16, z32)  # really computed in bf16
    assert np.linalg.norm(z16 - z32) / np.linalg.norm(z32) <= BF16_LATENT_REL_L2
    assert np.abs(z16 - z32).max() <= BF16_LATENT_MAX_ABS * z32.std()


def test_bf16_vae_loads_in_its_dtype_without_a_cast_warning(bf16_case):
    """The VAE loads in the label precision, as diffusers asks: casting it with ``.to(dtype)`` printed diffusers'
    warning about modules kept in fp32 (this class has none) on every labeling actor."""
    import logging

    from vlsa.labels.compute import LabelComputer

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    cfg, _, _ = bf16_case
    records = Records()
    library = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root logger
    library.addHandler(records)
    try:
        computer = LabelComputer(cfg, device="cpu", precision="bf16")
    finally:
        library.removeHandler(records)
    assert computer.vae.dtype == torch.bfloat16 and computer.vq.quant_conv.weight.dtype == torch.float32
    assert not [m for m in records.messages if "kept in float32" in m], records.messages


def test_bf16_vq_encoder_agreement_is_bounded(bf16_case):
    from vlsa.labels.compute import LabelComputer

    cfg, images, full = bf16_case
    half = LabelComputer(cfg, device="cpu", precision="fp32", vq_precision="bf16")
    same = _vq_agreement(full, half.label(images))
    print(f"bf16 VQ encoder: {same.mean():.4f} of {same.size} positions agree")
    assert same.size == 4096 and BF16_VQ_ENCODER_AGREEMENT <= same.mean() < 1.0, same.mean()  # < 1: ran in bf16
    assert half.vq.encoder.conv_in.weight.dtype == torch.bfloat16
    assert half.vq.quant_conv.weight.dtype == torch.float32  # the projection to the codebook space stays fp32


FP16_VQ_AGREEMENT = 0.99
"""Share of VQ positions whose index the labels must keep with the VQ-VAE encoder in fp16 (``label.vq_precision=fp16``)."""
FP16_VQ_LATENT_REL_L2 = 0.01
"""Bound on the relative L2 distance of the fp16 encoder's latents (before the nearest-code search) to fp32's."""


def test_fp16_vq_encoder_keeps_99_percent_of_the_indices(bf16_case):
    """fp16's 10-bit mantissa (bf16 has 7) keeps the encoder's rounding below the gaps between codes; the
    nearest-code search runs in fp32 either way."""
    from vlsa.labels.compute import LabelComputer

    cfg, images, full = bf16_case
    half = LabelComputer(cfg, device="cpu", precision="fp32", vq_precision="fp16")
    same = _vq_agreement(full, half.label(images))
    assert same.size == 4096 and same.mean() >= FP16_VQ_AGREEMENT, (same.mean(), same.size)
    x = to_unit_range(np.stack([prepare(image, half.geometry).vq_rgb for image in images]))
    z16 = half.vq_latents(x)
    z32 = LabelComputer(cfg, device="cpu", precision="fp32").vq_latents(x)
    rel = float((z16 - z32).norm() / z32.norm())
    print(f"fp16 VQ encoder: {same.mean():.4f} of {same.size} positions agree, latent relative L2 {rel:.5f}")
    assert z16.dtype == torch.float32 and 0 < rel <= FP16_VQ_LATENT_REL_L2  # > 0: the encoder really ran in fp16



TF32_VQ_AGREEMENT = 0.99
"""Share of VQ positions whose index labels computed in ``fp32`` on an Ampere or newer GPU keep: there PyTorch runs
convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``), their inputs and weights rounded to 10
mantissa bits with fp32 accumulation and output. Measured with that rounding simulated on CPU: 99.95% (2 of 4,096)."""


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 rounded to TF32's 10 mantissa bits (round to nearest, ties to even), kept in fp32."""
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


def _tf32_labels(cfg, images, monkeypatch) -> list[dict]:
    """Label rows in ``fp32`` with every convolution's input and weight rounded as a TF32 tensor core rounds them."""
    from vlsa.labels.compute import LabelComputer

    computer = LabelComputer(cfg, device="cpu", precision="fp32")
    with monkeypatch.context() as patch:
        forward = torch.nn.Conv2d._conv_forward
        patch.setattr(torch.nn.Conv2d, "_conv_forward", lambda self, x, w, b: forward(self, _tf32(x), _tf32(w), b))
        return computer.label(images)


def test_tf32_rounding_is_exact_where_representable_and_nearest_elsewhere():
    x = torch.tensor([1.0, 1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 1.0 + 2**-12, -3.0])
    assert _tf32(x).tolist() == [1.0, 1.0 + 2**-10, 1.0, 1.0 + 2**-9, 1.0, -3.0]  # ties go to the even mantissa


def test_fp32_labels_keep_99_percent_of_the_indices_under_a_gpus_tf32_convolutions(bf16_case, monkeypatch):
    """What ``fp32`` labels are on an A100/H100 by PyTorch's default: TF32 convolutions (their rounding simulated)."""
    cfg, images, full = bf16_case
    same = _vq_agreement(full, _tf32_labels(cfg, images, monkeypatch))
    print(f"fp32 with TF32 convolutions: {same.mean():.4f} of {same.size} positions agree")
    assert same.size == 4096 and TF32_VQ_AGREEMENT <= same.mean() < 1.0, same.mean()  # < 1: the rounding applied


TRAINED_VQ_STEPS = 600
"""Adam steps (batches of 32) of the briefly trained tiny VQ-VAE: about 80 s of one CPU thread."""
BF16_TRAINED_VQ_AGREEMENT = 0.96
"""Share of the VQ indices bf16 keeps with the briefly trained tiny VQ-VAE: measured 96.95-97.44% (seeds 0-2, one
and two torch threads, whose training differs in the last bits), below the 99% goal; the bound leaves room for
that spread (one flip is 0.024%)."""


def _training_images(decode, seed: int) -> list[Image.Image]:
    """256 images like the test images but not them: 224 generated JPEGs (another seed) and 32 noise images."""
    from vlsa.bench.label import jpeg_images

    rng = np.random.default_rng(100 + seed)
    images = [decode_image(b, decode) for b in jpeg_images(224, 48, 36, seed=1 + seed)]
    sizes = rng.integers(16, 80, (32, 2))
    return [*images, *(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes)]


def _trained_vq(cache_dir: str, images, folder, seed: int) -> tuple[str, float, float]:
    """The tiny VQ-VAE trained as VQ-VAEs are, saved: pixel MSE plus the codebook and commitment loss
    ``VQModel`` returns (straight-through gradients), from the random-init encoder with its codebook fitted by
    k-means to ``images`` (saved in ``folder / "start"``). Returns the folder and the commitment loss on ``images``
    before and after training."""
    from vlsa.model.builder import build_vq

    cfg = label_config(cache_dir)
    x = to_unit_range(np.stack([prepare(im, LabelGeometry.from_config(cfg)).vq_rgb for im in images]))
    start = _fitted_vq(cfg, images, folder / "start")
    vq = build_vq(label_config(cache_dir, f"model.vq.path={start}"))
    commit_before = _commitment_loss(vq, x)
    vq.train().requires_grad_(True)
    optimizer = torch.optim.Adam(vq.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(TRAINED_VQ_STEPS):
        batch = x[torch.randperm(len(x), generator=order)[:32]]
        out = vq(batch)
        loss = torch.nn.functional.mse_loss(out.sample, batch) + out.commit_loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vq.eval().requires_grad_(False)
    vq.save_pretrained(folder / "trained")
    return str(folder / "trained"), commit_before, _commitment_loss(vq, x)


@torch.no_grad()
def _commitment_loss(vq, x: torch.Tensor) -> float:
    """``VQModel``'s codebook + commitment loss (1.25 x mean squared latent-to-code distance) over ``x``."""
    return float(torch.stack([vq(x[i : i + 64]).commit_loss.mean() for i in range(0, len(x), 64)]).mean())


def _code_distance_ratio(cfg, images) -> torch.Tensor:
    """(distance to the nearest code) / (distance to the second nearest) at every VQ position, fp32: near 1, a
    position is close to a tie and any rounding may flip it."""
    from vlsa.labels.compute import LabelComputer

    computer = LabelComputer(cfg, device="cpu", precision="fp32")
    x = to_unit_range(np.stack([prepare(image, computer.geometry).vq_rgb for image in images]))
    step = cfg.label.batch_size
    z = torch.cat([computer.vq_latents(x[i : i + step]) for i in range(0, len(x), step)])
    nearest = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), computer.codebook).topk(2, largest=False)
    return nearest.values[:, 0] / nearest.values[:, 1]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_vq_encoder_agreement_on_a_briefly_trained_vq_vae(bf16_case, cache_dir, tmp_path, seed, monkeypatch):
    """The tiny VQ-VAE trained for TRAINED_VQ_STEPS on other images (a proxy for a trained tokenizer; the k-means
    codebook above is its starting point): prints the fp16 / bf16 agreement with fp32 on the test images before and
    after training (the table in docs/benchmarks.md). Training brings the latents closer to their codes, yet bf16
    stays below 99%; fp16 keeps its 99%."""
    from vlsa.labels.compute import LabelComputer

    cfg, images, _ = bf16_case
    trained, *commit = _trained_vq(cache_dir, _training_images(cfg.label.decode, seed), tmp_path, seed)
    figures = {}
    for name, folder in (("k-means start", tmp_path / "start"), ("trained", trained)):
        case = label_config(cache_dir, f"model.vq.path={folder}")
        full = LabelComputer(case, device="cpu", precision="fp32").label(images)
        agree = {p: _vq_agreement(full, LabelComputer(case, device="cpu", precision="fp32", vq_precision=p)
                                  .label(images)).mean() for p in ("fp16", "bf16")}
        agree["tf32"] = _vq_agreement(full, _tf32_labels(case, images, monkeypatch)).mean()
        ratio = _code_distance_ratio(case, images)
        figures[name] = (agree["fp16"], agree["bf16"], float(ratio.mean()), agree["tf32"])
        print(f"seed {seed} {name:<14} fp16 {agree['fp16']:.2%}  bf16 {agree['bf16']:.2%}  fp32 with TF32 convolutions "
              f"{agree['tf32']:.2%}  nearest/second-nearest "
              f"code distance mean {ratio.mean():.3f}, above 0.95 at {(ratio > 0.95).double().mean():.1%} of positions")
    print(f"seed {seed} commitment loss on the training images {commit[0]:.5f} -> {commit[1]:.5f} "
          f"({TRAINED_VQ_STEPS} steps)")
    fp16, bf16, ratio, tf32 = figures["trained"]
    assert ratio < figures["k-means start"][2] and commit[1] < commit[0]  # the latents moved towards their codes
    assert fp16 >= FP16_VQ_AGREEMENT and tf32 >= TF32_VQ_AGREEMENT
    assert BF16_TRAINED_VQ_AGREEMENT <= bf16 < 1.0  # < 1: ran in bf16


def test_an_fp16_overflow_is_an_error_not_arbitrary_codes(label_cfg):
    from vlsa.labels.compute import LabelComputer

    computer = LabelComputer(label_cfg, device="cpu", precision="fp32", vq_precision="fp16")
    with torch.no_grad():
        computer.vq.encoder.conv_in.weight.mul_(1e6)  # activations far past fp16's 65,504
    with pytest.raises(FloatingPointError, match="overflowed in torch.float16.*label.vq_precision=fp32"):
        computer.label(_images()[:1])


def _encoder_parts(vq) -> dict[str, torch.nn.Module]:
    """The VQ-VAE's encoder path in order, one entry per block, resnet, attention or convolution."""
    enc = vq.encoder
    parts = {"conv_in": enc.conv_in}
    for i, block in enumerate(enc.down_blocks):
        parts.update({f"down{i}.resnet{j}": r for j, r in enumerate(block.resnets)})
        parts.update({f"down{i}.downsample{j}": d for j, d in enumerate(block.downsamplers or [])})
    mid = enc.mid_block
    parts["mid.resnet0"] = mid.resnets[0]
    for j, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
        parts.update({f"mid.attention{j}": attn, f"mid.resnet{j + 1}": resnet})
    parts.update({"conv_norm_out": enc.conv_norm_out, "conv_out": enc.conv_out, "quant_conv": vq.quant_conv})
    return parts


def _codes_with_bf16_parts(cfg, x, bf16: set[str]) -> torch.Tensor:
    """VQ codes with the named encoder parts in bf16 and the others in fp32, each part's input cast to its dtype."""
    from vlsa.model.builder import build_vq

    vq = build_vq(cfg)
    codebook = vq.quantize.embedding.weight.detach().float()
    for name, part in _encoder_parts(vq).items():
        dtype = torch.bfloat16 if name in bf16 else torch.float32
        part.to(dtype)
        part.register_forward_pre_hook(
            lambda _, args, dtype=dtype: tuple(a.to(dtype) if torch.is_tensor(a) else a for a in args))
    step = cfg.label.batch_size  # the batches LabelComputer uses: convolution results depend on the batch
    with torch.no_grad():
        latents = torch.cat([vq.encode(x[i : i + step]).latents.float() for i in range(0, len(x), step)])
    return nearest_codes(latents, codebook)


@pytest.mark.slow
def test_bf16_vq_flips_by_encoder_part(bf16_case):
    """Which parts of the VQ-VAE encoder flip codes in bf16: prints the agreement with fp32 for each part alone
    in bf16, each part alone kept fp32, and the first k parts kept fp32 (the table in docs/benchmarks.md)."""
    from vlsa.labels.compute import LabelComputer

    cfg, images, _ = bf16_case
    x = to_unit_range(np.stack([prepare(image, LabelGeometry.from_config(cfg)).vq_rgb for image in images]))
    reference = _codes_with_bf16_parts(cfg, x, set())
    names = list(_encoder_parts(LabelComputer(cfg, device="cpu").vq))
    computer = LabelComputer(cfg, device="cpu", precision="fp32", vq_precision="bf16")
    step = cfg.label.batch_size
    shipped = nearest_codes(torch.cat([computer.vq_latents(x[i : i + step]) for i in range(0, len(x), step)]),
                            computer.codebook)
    # the harness reproduces the shipped bf16 path exactly: the table measures what label.vq_precision=bf16 does
    assert torch.equal(_codes_with_bf16_parts(cfg, x, set(names) - {"quant_conv"}), shipped)
    fp32 = LabelComputer(cfg, device="cpu", precision="fp32")
    assert torch.equal(reference, nearest_codes(fp32.vq_latents(x), fp32.codebook))  # fp32: any batching

    def row(label: str, bf16: set[str]) -> float:
        agree = (_codes_with_bf16_parts(cfg, x, bf16) == reference).double().mean().item()
        print(f"{label:<44} {agree:8.2%}  {int(round((1 - agree) * reference.numel())):4d} of {reference.numel()}")
        return agree

    print()
    row("all in bf16", set(names))
    for name in names:
        row(f"only {name} in bf16", {name})
    for name in names:
        row(f"all in bf16 but {name}", set(names) - {name})
    for k in range(1, len(names)):
        row(f"first {k} parts fp32 (to {names[k - 1]})", set(names[k:]))
    assert row("all in fp32", set()) == 1.0
