"""Repository lint for the secure defaults: token auth in every cluster config, no plaintext secrets,
``torch.load`` only with ``weights_only=True``, DeepSpeed checkpoints only through the weights-only
reader, safetensors for saved weights."""

from __future__ import annotations

import pytest

from tests.cluster.lint import (
    ALLOW, cluster_config_auth_problems, find_secrets, is_cluster_config, repository_files, unsafe_deepspeed_loads,
    unsafe_torch_loads, unsafe_weight_saves,
)  # fmt: skip
from tests.cluster.manifests import ROOT, yaml_documents

# ---- the scanners can fail: they flag what they exist to flag ----


def test_secret_scanner_flags_keys_passwords_and_url_credentials():
    key_id = "AKIA" + "Q7" * 8
    samples = [
        f"aws_access_key_id = {key_id}",
        "aws_secret_access_key: " + "a1B2" * 10,
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        'admin_pass' + 'word = "hunter22"',
        "  pass" + "word: hunter22",
        "postgresql://mlflow:" + "hunter22@db.internal/mlflow",
        "https://alice:" + "hunter22@mlflow.internal.io/x",
        "RAY_AUTH_" + "MODE=disabled",
    ]
    assert [len(find_secrets(s)) > 0 for s in samples] == [True] * len(samples)


def test_secret_scanner_passes_references_and_dummy_test_credentials():
    samples = [
        "valueFrom: {secretKeyRef: {name: mlflow-client, key: password}}",
        'env["MLFLOW_TRACKING_PASSWORD"] = Path(password_file).read_text()',
        'export MLFLOW_TRACKING_PASSWORD="$(cat /tmp/x/admin_password)"',
        '"AWS_SECRET_ACCESS_KEY": "testing"',
        "- name: MLFLOW_AUTH_ADMIN_PASSWORD",
        "https://alice:" + "hunter22@mlflow.example.com/x",
        "token = 'AKIA" + "Q7" * 8 + "'  # " + ALLOW,
    ]
    assert [find_secrets(s) for s in samples] == [[]] * len(samples)
    assert find_secrets("password = read_password(path)", ".py") == []
    assert find_secrets("password = read_password(path)", ".ini")


def test_weight_checkers_flag_unsafe_loads_and_saves():
    source = "import torch\na = torch.load(p, weights_only=True)\nb = torch.load(p)\n"
    source += "c = torch.load(\n  p, weights_only=False)\n"
    assert unsafe_torch_loads(source) == [3, 4]
    assert unsafe_weight_saves("m.save_pretrained(d, safe_serialization=False)\nm.save_pretrained(d)\n") == [1]


def test_deepspeed_load_checker_flags_loads_without_the_weights_only_reader():
    unguarded = "def resume(engine, d):\n    engine.load_checkpoint(d, tag='ds')\n"
    assert unsafe_deepspeed_loads(unguarded) == [2]
    assert unsafe_deepspeed_loads("engine.load_checkpoint(d)\n") == [1]
    guarded = ("def resume(engine, d):\n    engine.checkpoint_engine = weights_only_engine()\n"
               "    engine.load_checkpoint(d, tag='ds')\n")
    assert unsafe_deepspeed_loads(guarded) == []
    assert unsafe_deepspeed_loads("safe_load.load_checkpoint(engine, d, 'ds')\n") == []


def test_auth_checker_flags_configs_without_token_auth():
    assert cluster_config_auth_problems({"kind": "RayCluster", "metadata": {"name": "x"}, "spec": {}})
    job = {"kind": "RayJob", "metadata": {"name": "j"}, "spec": {"rayClusterSpec": {"authOptions": {"mode": "token"}}}}
    assert cluster_config_auth_problems(job) == []
    launcher = {"provider": {}, "available_node_types": {}, "head_start_ray_commands": ["ray start --head"]}
    assert cluster_config_auth_problems(launcher)


# ---- the repository ----


def test_every_cluster_config_turns_token_auth_on():
    docs = [
        (path, doc)
        for path in repository_files()
        if path.suffix in (".yaml", ".yml")
        for doc in yaml_documents(path)
        if is_cluster_config(doc)
    ]
    assert len(docs) >= 5, "the launcher config, the RayCluster and three RayJobs"
    problems = [f"{path.relative_to(ROOT)}: {p}" for path, doc in docs for p in cluster_config_auth_problems(doc)]
    assert not problems, problems


def test_no_plaintext_secrets_in_the_repository():
    found = [
        f"{path.relative_to(ROOT)}: {hit}"
        for path in repository_files()
        for hit in find_secrets(path.read_text(errors="replace"), path.suffix)
    ]
    assert not found, found


@pytest.mark.parametrize("check", [unsafe_torch_loads, unsafe_deepspeed_loads, unsafe_weight_saves],
                         ids=["torch.load", "deepspeed.load_checkpoint", "safetensors"])
def test_python_sources_load_and_save_weights_safely(check):
    python = [p for p in repository_files() if p.suffix == ".py"]
    assert len(python) > 20
    bad = {str(p.relative_to(ROOT)): lines for p in python if (lines := check(p.read_text()))}
    assert not bad, bad


def test_the_training_loop_resumes_through_the_weights_only_reader():
    """The lint above must have something to check: the resume path calls DeepSpeed's loader."""
    calls = [p for p in repository_files() if p.suffix == ".py" and p.parts[-3:-1] == ("vlsa", "train")
             and ".load_checkpoint(" in p.read_text()]
    assert [p.name for p in calls if "engine.load_checkpoint(" in p.read_text()] == ["safe_load.py"]
