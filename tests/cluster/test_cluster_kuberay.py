"""KubeRay manifests: ray.io/v1, real entrypoints, token auth, S3 through IRSA, MLflow from a Secret."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
import yaml

from tests.cluster.manifests import ROOT, k8s_documents, kuberay_documents

JOB_FILES = {"label": "ray_jobs/label.py", "train": "ray_jobs/train.py", "tune": "ray_jobs/tune.py"}
ALL_JOB_FILES = [*JOB_FILES.values(), "ray_jobs/evaluate.py"]
# (pod variable, key in the Secret mlflow-client)
MLFLOW_KEYS = [
    ("MLFLOW_TRACKING_URI", "tracking-uri"), ("MLFLOW_TRACKING_USERNAME", "username"),
    ("MLFLOW_TRACKING_PASSWORD", "password"),
]  # fmt: skip
SECRET_WORDS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "CREDENTIALS"}


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"]}[doc["kind"]](doc)


def _pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def _jobs() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in kuberay_documents() if doc["kind"] == "RayJob"}


def test_every_manifest_parses_and_kuberay_objects_use_ray_io_v1():
    docs = k8s_documents()
    assert {doc["kind"] for _, doc in docs} >= {"RayCluster", "RayJob", "Deployment", "Service", "ServiceAccount"}
    assert all(doc["apiVersion"] == "ray.io/v1" for _, doc in kuberay_documents())
    assert sorted(_jobs()) == ["vlsa-label", "vlsa-train", "vlsa-tune"]


def test_the_four_job_entry_points_exist():
    missing = [path for path in ALL_JOB_FILES if not (ROOT / path).is_file()]
    assert not missing, f"job entry points missing: {missing}"


@pytest.mark.parametrize("job", sorted(JOB_FILES))
def test_job_arguments_parse_with_the_jobs_own_cli_and_name_a_valid_config(job):
    """The entrypoint's arguments are accepted by the script's parser, and its config and overrides load."""
    from vlsa.config import load_config

    argv = shlex.split(_jobs()[f"vlsa-{job}"]["spec"]["entrypoint"])
    module = _load_job_module(ROOT / argv[1])
    args = module.parse_args(argv[2:])
    cfg = load_config(args.config, args.overrides)
    # Every job runs on the A100 group: labeling actors and training workers both take GPUs.
    assert cfg.label.gpus_per_actor >= 1 if job == "label" else cfg.run.use_gpu


def _load_job_module(path):
    spec = importlib.util.spec_from_file_location(f"_job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("job", sorted(JOB_FILES))
def test_job_entrypoint_runs_its_script_from_the_working_dir(job):
    spec = _jobs()[f"vlsa-{job}"]["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", JOB_FILES[job]]
    assert "--config" in argv
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/vlsa"  # where the image puts the repository
    assert spec["shutdownAfterJobFinishes"] is True


def test_docker_image_puts_the_repository_where_jobs_expect_it():
    dockerfile = (ROOT / "cluster" / "docker" / "ray.Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-cu130" in dockerfile and "WORKDIR /home/ray/vlsa" in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile


@pytest.mark.parametrize("doc", [d for _, d in kuberay_documents()], ids=lambda d: d["metadata"]["name"])
def test_clusters_have_token_auth_a_gpu_group_and_a_private_dashboard(doc):
    spec = _cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert not spec["headGroupSpec"].get("enableIngress", False)
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in spec["workerGroupSpecs"]]
    gpus = [limit.get("nvidia.com/gpu") for limit in limits]
    assert gpus and set(gpus) == {"8"}


@pytest.mark.parametrize("doc", [d for _, d in kuberay_documents()], ids=lambda d: d["metadata"]["name"])
def test_pods_get_s3_from_the_irsa_account_and_mlflow_from_the_secret(doc):
    accounts = {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == "ServiceAccount"}
    for pod in _pod_specs(_cluster_spec(doc)):
        account = accounts[pod["serviceAccountName"]]
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        env = {item["name"]: item for item in pod["containers"][0]["env"]}
        for name, key in MLFLOW_KEYS:
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-client", "key": key}
        assert not any(name.startswith("AWS_") for name in env), "S3 credentials come from the role only"


@pytest.mark.parametrize("job", sorted(JOB_FILES))
def test_runtime_env_and_arguments_carry_no_secrets(job):
    spec = _jobs()[f"vlsa-{job}"]["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    names = list(runtime_env.get("env_vars", {}))
    assert not [n for n in names if SECRET_WORDS & set(n.upper().split("_")) or n.startswith(("MLFLOW_", "AWS_"))]
    words = set(re.split(r"[^a-z]+", spec["entrypoint"].lower()))
    assert not words & {w.lower() for w in SECRET_WORDS}, spec["entrypoint"]


def test_mlflow_server_uses_sql_s3_basic_auth_and_secret_backed_settings():
    deployment = next(d for _, d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "server" and "--app-name=basic-auth" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert any(a.startswith("--allowed-hosts=") and "*" not in a for a in args)
    env = {item["name"]: item for item in container["env"]}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-server", name
    service = next(d for _, d in k8s_documents() if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    assert service["spec"]["type"] == "ClusterIP"
