"""Scanners behind the repository lint: plaintext secrets, unsafe weight loading (``torch.load`` and
DeepSpeed's ``load_checkpoint``), Ray configs without auth."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

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
    "credential in URL": re.compile(
        r"\b[a-z][a-z0-9+]*://[^\s:/@\"']+:[^\s@/\"'$]+@(?![\w.-]*example\.(?:com|org|net)\b)[\w.-]+"
    ),
    "auth turned off": re.compile(r"RAY_AUTH_MODE[\"'\s:=]+disabled"),
}
# Unquoted ``password = value`` is a literal in config files but an expression in Python.
SKIPPED_BY_SUFFIX = {".py": {"password value"}}
ALLOW = "pragma: allowlist secret"  # on a line holding a deliberately fake secret
START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (what would be committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    paths = [ROOT / name for name in listed]
    return [p for p in paths if p.is_file() and p.stat().st_size < 2_000_000 and b"\0" not in p.read_bytes()[:4096]]


def find_secrets(text: str, suffix: str = "") -> list[str]:
    """The secret patterns that occur in ``text`` (a file with this suffix), each with the matched snippet."""
    skip = SKIPPED_BY_SUFFIX.get(suffix, set())
    text = "\n".join(line for line in text.splitlines() if ALLOW not in line)
    return [
        f"{name}: {m.group(0)[:60]!r}"
        for name, pattern in SECRET_PATTERNS.items()
        if name not in skip
        for m in pattern.finditer(text)
    ]


def unsafe_torch_loads(source: str) -> list[int]:
    """Lines of ``torch.load(...)`` calls that do not pass ``weights_only=True``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and _is_torch_load(node.func) and _keyword(node, "weights_only") is not True
    ]


def unsafe_weight_saves(source: str) -> list[int]:
    """Lines of calls that switch safetensors off (``safe_serialization=False``)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and _keyword(node, "safe_serialization") is False
    ]


def unsafe_deepspeed_loads(source: str) -> list[int]:
    """Lines of ``engine.load_checkpoint(...)`` calls (DeepSpeed unpickles with ``weights_only=False``
    by default) in a function that does not first install the weights-only reader
    (``engine.checkpoint_engine = weights_only_engine()``); ``safe_load.load_checkpoint`` is that function."""
    tree = ast.parse(source)
    guarded: set[int] = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and _installs_weights_only(function):
            guarded |= {id(node) for node in ast.walk(function)}
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_checkpoint"
        and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "safe_load")
        and id(node) not in guarded
    ]


def _installs_weights_only(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            called = node.value.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            if name == "weights_only_engine" and any(
                isinstance(t, ast.Attribute) and t.attr == "checkpoint_engine" for t in node.targets
            ):
                return True
    return False


def _is_torch_load(func: ast.AST) -> bool:
    return isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name) and (
        func.value.id == "torch"
    )


def _keyword(call: ast.Call, name: str):
    """The constant value of a keyword argument; None when absent or not a constant."""
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def cluster_config_auth_problems(doc: dict) -> list[str]:
    """Why a Ray cluster config (launcher YAML or KubeRay object) does not enforce token auth; [] if it does."""
    if not isinstance(doc, dict):
        return []
    if doc.get("kind") in KUBERAY_KINDS:
        spec = doc.get("spec", {})
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        mode = cluster.get("authOptions", {}).get("mode")
        name = f"{doc['kind']} {doc.get('metadata', {}).get('name')}"
        return [] if mode == "token" else [f"{name}: authOptions.mode is {mode!r}"]
    if "provider" in doc and "available_node_types" in doc:
        commands = [c for key in START_KEYS for c in doc.get(key, []) if "ray start" in c]
        return [f"ray start without RAY_AUTH_MODE=token: {c!r}" for c in commands if "RAY_AUTH_MODE=token" not in c]
    return []


def is_cluster_config(doc) -> bool:
    """A KubeRay object or a Ray cluster launcher config."""
    return isinstance(doc, dict) and (doc.get("kind") in KUBERAY_KINDS or "available_node_types" in doc)
