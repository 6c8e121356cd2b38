"""Paths and loaders shared by the deployment tests."""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import json
from pathlib import Path

import jsonschema
import yaml

from vlsa.config import YAML_LOADER

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
KUBERAY_RELEASE = "v1.7.0"
KUBERAY_DATA = Path(__file__).parent / "data" / f"kuberay-{KUBERAY_RELEASE}"


def yaml_documents(path: Path) -> list:
    """The documents of a YAML file, as ``yaml.safe_load_all`` gives them (a fresh copy on every call)."""
    return copy.deepcopy(_parsed(Path(path)))


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> list:
    """Parsed once per test process: most deployment tests read the manifests again."""
    return list(yaml.load_all(path.read_text(), Loader=YAML_LOADER))


def ray_schema_path() -> Path:
    """The cluster-config JSON schema shipped in the installed ``ray`` package (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    return Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"


def launcher_configs() -> list[Path]:
    """Every Ray cluster launcher YAML under cluster/ (a top-level ``provider`` and node types)."""
    found = []
    for path in sorted(CLUSTER.rglob("*.yaml")):
        docs = yaml_documents(path)
        if len(docs) == 1 and isinstance(docs[0], dict) and "provider" in docs[0] and "available_node_types" in docs[0]:
            found.append(path)
    return found


def k8s_documents() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under cluster/k8s, with the file it came from."""
    return [
        (path, doc)
        for path in sorted((CLUSTER / "k8s").glob("*.yaml"))
        for doc in yaml_documents(path)
        if doc
    ]


def kuberay_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in k8s_documents() if doc.get("kind") in KUBERAY_KINDS]


def ray_schema() -> dict:
    return json.loads(ray_schema_path().read_text())


def kuberay_schema(kind: str) -> dict:
    """The ``ray.io/v1`` OpenAPI schema of a KubeRay kind, from the CRDs of the pinned release (vendored)."""
    plural = {"RayJob": "rayjobs", "RayCluster": "rayclusters"}[kind]
    with gzip.open(KUBERAY_DATA / f"{plural}.v1.schema.json.gz", "rt") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=None)
def kuberay_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator of ``kuberay_schema(kind)``, the schema itself checked once (the slow part of
    ``jsonschema.validate``, which checks it again on every call)."""
    schema = kuberay_schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def kuberay_operator() -> dict:
    """How the pinned operator reaches a Ray head: its namespace, pod labels and the dashboard port."""
    (operator,) = yaml_documents(KUBERAY_DATA / "operator.yaml")
    return operator


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields of ``value`` that ``schema`` (a structural CRD schema) does not declare: the API server prunes
    them silently, or rejects them under ``kubectl apply --validate=strict``."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema["properties"]
        found = [f"{path}.{key}".lstrip(".") for key in value if key not in props]
        return found + [u for key, v in value.items() if key in props for u in unknown_fields(v, props[key], f"{path}.{key}")]
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [u for key, v in value.items() for u in unknown_fields(v, schema["additionalProperties"], f"{path}.{key}")]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [u for i, v in enumerate(value) for u in unknown_fields(v, schema["items"], f"{path}.{i}")]
    return []
