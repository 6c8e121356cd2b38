"""Repository lint for the secure defaults: token auth in every cluster config, no plaintext secrets,
``torch.load`` only with ``weights_only=True``, safetensors for saved weights."""

from __future__ import annotations

import ast
import re
import subprocess

import pytest
import yaml

from tests.cluster.manifests import KUBERAY_KINDS, ROOT

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_secret_access_key\W{1,4}[A-Za-z0-9/+=]{40}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{34}\b"),
    # A password-like key given a literal value: quoted anywhere, or unquoted as a YAML / INI value.
    "password literal": re.compile(r"(?i)[\w-]*(?:password|passwd)[\"']?\s*[:=]\s*[\"'][^\"'\s$]{3,}[\"']"),
    "password value": re.compile(r"(?im)^\s*[\w-]*(?:password|passwd)\s*[:=][ \t]*[^\s\"'$#{<][^\s#]*[ \t]*$"),
    # A user and password written into a URL before the host (a $VAR reference is fine, and so are the
    # documentation-only example domains of RFC 2606, which tests use for fake credentials).
    "credential in URL": re.compile(r"\b[a-z][a-z0-9+]*://[^\s:/@\"']+:[^\s@/\"'$]+@(?![\w.-]*example\.(?:com|org|net)\b)[\w.-]+"),
    "auth turned off": re.compile(r"RAY_AUTH_MODE[\"'\s:=]+disabled"),
}


def repository_files() -> list:
    """Tracked and untracked-but-not-ignored text files (what would be committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    paths = [ROOT / name for name in listed]
    return [p for p in paths if p.is_file() and p.stat().st_size < 2_000_000 and b"\0" not in p.read_bytes()[:4096]]


# Unquoted ``password: value`` is a literal in config files but an expression in Python.
CODE_ONLY_SKIPS = {".py": {"password value"}}
ALLOW = "pragma: allowlist secret"  # on a line holding a deliberately fake secret


def find_secrets(text: str, suffix: str = "") -> list[str]:
    """Names of the secret patterns that occur in ``text``, with the matched snippet."""
    skip = CODE_ONLY_SKIPS.get(suffix, set())
    text = "\n".join(line for line in text.splitlines() if ALLOW not in line)
    return [
        f"{name}: {m.group(0)[:60]!r}"
        for name, pattern in SECRET_PATTERNS.items()
        if name not in skip
        for m in pattern.finditer(text)
    ]


def unsafe_torch_loads(source: str) -> list[int]:
    """Lines of ``torch.load(...)`` calls that do not pass ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _is_torch_attr(node.func, "load"):
            if not any(k.arg == "weights_only" and _is_true(k.value) for k in node.keywords):
                lines.append(node.lineno)
    return lines


def unsafe_weight_saves(source: str) -> list[int]:
    """Lines of calls that switch safetensors off (``safe_serialization=False``)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and any(k.arg == "safe_serialization" and isinstance(k.value, ast.Constant) and k.value.value is False for k in node.keywords)
    ]


def _is_torch_attr(func: ast.AST, attr: str) -> bool:
    return isinstance(func, ast.Attribute) and func.attr == attr and isinstance(func.value, ast.Name) and func.value.id == "torch"


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def cluster_config_auth_problems(doc: dict) -> list[str]:
    """Why a Ray cluster config (launcher YAML or KubeRay object) does not enforce token auth; [] if it does."""
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") in KUBERAY_KINDS:
        spec = doc.get("spec", {})
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        mode = cluster.get("authOptions", {}).get("mode")
        return [] if mode == "token" else [f"{doc['kind']} {doc.get('metadata', {}).get('name')}: authOptions.mode is {mode!r}"]
    if "provider" in doc and "available_node_types" in doc:
        commands = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in doc.get(key, [])]
        return [f"ray start without RAY_AUTH_MODE=token: {c!r}" for c in commands if "ray start" in c and "RAY_AUTH_MODE=token" not in c]
    return []


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


def test_torch_load_checker_flags_calls_without_weights_only():
    source = "import torch\na = torch.load(p, weights_only=True)\nb = torch.load(p)\nc = torch.load(\n  p, weights_only=False)\n"
    assert unsafe_torch_loads(source) == [3, 4]
    assert unsafe_weight_saves("m.save_pretrained(d, safe_serialization=False)\nm.save_pretrained(d)\n") == [1]


def test_auth_checker_flags_configs_without_token_auth():
    assert cluster_config_auth_problems({"kind": "RayCluster", "metadata": {"name": "x"}, "spec": {}})
    job = {"kind": "RayJob", "metadata": {"name": "j"}, "spec": {"rayClusterSpec": {"authOptions": {"mode": "token"}}}}
    assert cluster_config_auth_problems(job) == []
    launcher = {"provider": {}, "available_node_types": {}, "head_start_ray_commands": ["ray start --head"]}
    assert cluster_config_auth_problems(launcher)


# ---- the repository ----


def test_every_cluster_config_turns_token_auth_on():
    checked, problems = 0, []
    for path in repository_files():
        if path.suffix not in (".yaml", ".yml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and (doc.get("kind") in KUBERAY_KINDS or "available_node_types" in doc):
                checked += 1
                problems += [f"{path.relative_to(ROOT)}: {p}" for p in cluster_config_auth_problems(doc)]
    assert checked >= 5, "the launcher config, the RayCluster and three RayJobs"
    assert not problems, problems


def test_no_plaintext_secrets_in_the_repository():
    files = repository_files()
    found = [f"{p.relative_to(ROOT)}: {hit}" for p in files for hit in find_secrets(p.read_text(errors="replace"), p.suffix)]
    assert not found, found


@pytest.mark.parametrize("check", [unsafe_torch_loads, unsafe_weight_saves], ids=["torch.load", "safetensors"])
def test_python_sources_load_and_save_weights_safely(check):
    python = [p for p in repository_files() if p.suffix == ".py"]
    assert len(python) > 20
    bad = {str(p.relative_to(ROOT)): lines for p in python if (lines := check(p.read_text()))}
    assert not bad, bad
