"""Label identity is the VQ-VAE / VAE weights' content: the same weights under another path or in S3
agree, other weights do not (tiny models saved locally and copied to moto S3)."""

from __future__ import annotations

import shutil

import pytest
import torch
from label_helpers import label_config

from vlsa.io import storage
from vlsa.labels.schema import SCHEMA_VERSION, LabelsMismatch, check_manifest, label_identity


@pytest.fixture(scope="module")
def saved_parts(frozen_models, tmp_path_factory):
    """The tiny VQ-VAE and VAE saved with ``save_pretrained``, plus a VQ-VAE with other weights."""
    vq, vae = frozen_models
    root = tmp_path_factory.mktemp("parts")
    vq.save_pretrained(root / "vq")
    vae.save_pretrained(root / "vae")
    other = type(vq).from_config(vq.config)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.5)
    other.save_pretrained(root / "vq-other")
    return root


def _cfg(cache_dir, vq: str, vae: str):
    return label_config(str(cache_dir), f"model.vq.path={vq}", f"model.recon.vae.path={vae}")


def test_same_weights_under_another_local_path_have_the_same_identity(saved_parts, tmp_path):
    shutil.copytree(saved_parts, tmp_path / "copy")
    here = label_identity(_cfg(tmp_path / "c1", saved_parts / "vq", saved_parts / "vae"))
    there = label_identity(_cfg(tmp_path / "c2", tmp_path / "copy" / "vq", tmp_path / "copy" / "vae"))
    assert here == there
    assert here["vq"]["weights"].startswith("sha256:") and "path" not in here["vq"]


@pytest.mark.integration
def test_labels_made_from_a_local_folder_fit_a_run_reading_an_s3_copy(saved_parts, s3_server, tmp_path):
    bucket = s3_server.make_bucket("vlsa-identity")
    storage.upload_dir(saved_parts, f"{bucket}/models")
    made = {"identity": label_identity(_cfg(tmp_path / "c1", saved_parts / "vq", saved_parts / "vae"))}
    run = _cfg(tmp_path / "c2", f"{bucket}/models/vq", f"{bucket}/models/vae")
    assert made["identity"]["schema_version"] == SCHEMA_VERSION
    check_manifest(made, run, "labels/")  # no error: same content, other place
    other = _cfg(tmp_path / "c3", f"{bucket}/models/vq-other", f"{bucket}/models/vae")
    with pytest.raises(LabelsMismatch, match=r"vq: labels have \{'weights': 'sha256:[0-9a-f]+'\}, config has "
                                             r"\{'weights': 'sha256:[0-9a-f]+'\}"):
        check_manifest(made, other, "labels/")


def test_a_part_whose_weights_cannot_be_read_is_an_error_naming_it(saved_parts, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot read the weights of '.*missing-vq'"):
        label_identity(_cfg(tmp_path, tmp_path / "missing-vq", saved_parts / "vae"))
