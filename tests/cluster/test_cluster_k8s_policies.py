"""Kubernetes manifests against what the cluster will enforce: KubeRay v1.7.0's CRD schemas (vendored), the
network policies with the operator's documented access, the namespace's Pod Security level, read-only root
filesystems with writable scratch, images pinned by digest, Hugging Face settings from Secrets."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest

from tests.cluster import podsecurity
from tests.cluster.manifests import (
    ROOT, k8s_documents, kuberay_documents, kuberay_operator, kuberay_schema, kuberay_validator, unknown_fields,
)  # fmt: skip
from tests.cluster.netpol import Pod, allowed

NAMESPACE = "vlsa"
DIGEST = re.compile(r"^[\w.-]+(?:\.[\w.-]+)+(?::\d+)?/[\w./-]+@sha256:[0-9a-f]{64}$")


def _docs(kind: str) -> list[dict]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_templates() -> list[tuple[str, dict]]:
    """(name, PodSpec) of every pod the manifests make, with KubeRay's autoscaler sidecar where it adds one."""
    pods = []
    for doc in _docs("Deployment"):
        pods.append((f"Deployment {doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    for _, doc in kuberay_documents():
        name, spec = f"{doc['kind']} {doc['metadata']['name']}", _cluster_spec(doc)
        head = copy.deepcopy(spec["headGroupSpec"]["template"]["spec"])
        if spec.get("enableInTreeAutoscaling"):
            options = spec.get("autoscalerOptions", {})
            head["containers"].append({"name": "autoscaler", "securityContext": options.get("securityContext")})
        pods.append((f"{name} head", head))
        pods += [(f"{name} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
        if doc["kind"] == "RayJob":
            pods.append((f"{name} submitter", doc["spec"]["submitterPodTemplate"]["spec"]))
    return pods


# ---- KubeRay CRD schemas ----


@pytest.mark.parametrize("doc", [d for _, d in kuberay_documents()], ids=lambda d: d["metadata"]["name"])
def test_kuberay_objects_validate_against_the_pinned_crd_schema(doc):
    kuberay_validator(doc["kind"]).validate(doc)
    assert unknown_fields(doc, kuberay_schema(doc["kind"])) == [], "fields the API server would drop"


def test_the_crd_schema_rejects_a_broken_object():
    doc = copy.deepcopy(next(d for _, d in kuberay_documents() if d["kind"] == "RayJob"))
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="four"):
        kuberay_validator("RayJob").validate(doc)
    doc = copy.deepcopy(next(d for _, d in kuberay_documents() if d["kind"] == "RayJob"))
    doc["spec"]["submiterPodTemplate"] = doc["spec"].pop("submitterPodTemplate")
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnly"] = True
    assert unknown_fields(doc, kuberay_schema("RayJob")) == [
        "spec.submiterPodTemplate", "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.securityContext.readOnly"]


# ---- network policies ----


def _ray_pod(node_type: str) -> Pod:
    # The labels KubeRay puts on every Ray pod it creates.
    return Pod(NAMESPACE, {"ray.io/is-ray-node": "yes", "ray.io/node-type": node_type, "ray.io/cluster": "vlsa"})


def test_the_operator_reaches_the_heads_dashboard_port_and_nothing_else():
    operator = kuberay_operator()
    policies = _docs("NetworkPolicy")
    source = Pod(operator["namespace"], operator["pod_labels"])
    port = operator["dashboard_port"]
    assert allowed(policies, source, _ray_pod("head"), port)
    assert not allowed(policies, source, _ray_pod("head"), 6379), "the GCS stays closed to the operator"
    assert not allowed(policies, source, _ray_pod("worker"), port)
    # The operator's labels in another namespace, or another pod of the operator's namespace: nothing.
    assert not allowed(policies, Pod("default", operator["pod_labels"]), _ray_pod("head"), port)
    assert not allowed(policies, Pod(operator["namespace"], {"app": "other"}), _ray_pod("head"), port)


def test_the_namespace_reaches_ray_and_mlflow_and_outsiders_do_not():
    policies = _docs("NetworkPolicy")
    submitter = Pod(NAMESPACE, {"ray.io/originated-from-cr-name": "vlsa-train", "batch.kubernetes.io/job-name": "x"})
    mlflow = Pod(NAMESPACE, {"app.kubernetes.io/name": "mlflow"})
    assert allowed(policies, submitter, _ray_pod("head"), 8265)  # the RayJob's submitter pod
    assert allowed(policies, _ray_pod("worker"), _ray_pod("head"), 6379)
    assert allowed(policies, _ray_pod("worker"), mlflow, 5000)
    outsider = Pod("default", {"app": "curious"})
    assert not any(allowed(policies, outsider, target, port)
                   for target, port in [(_ray_pod("head"), 8265), (_ray_pod("worker"), 10001), (mlflow, 5000)])


def test_the_policy_evaluator_denies_when_only_the_old_policy_exists():
    """Without the operator rule (the namespace-only policy alone) the operator is shut out: the test can fail."""
    operator = kuberay_operator()
    old = [p for p in _docs("NetworkPolicy") if p["metadata"]["name"] != "ray-head-dashboard-from-kuberay-operator"]
    assert not allowed(old, Pod(operator["namespace"], operator["pod_labels"]), _ray_pod("head"), 8265)


# ---- Pod Security ----


def test_every_pod_meets_the_level_its_namespace_enforces():
    (namespace,) = _docs("Namespace")
    labels = namespace["metadata"]["labels"]
    enforce = labels["pod-security.kubernetes.io/enforce"]
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == enforce
    pods = _pod_templates()
    assert len(pods) >= 13, [name for name, _ in pods]
    levels = {name: podsecurity.level(pod) for name, pod in pods}
    assert {name: lv for name, lv in levels.items() if not podsecurity.admits(enforce, lv)} == {}
    assert enforce == "restricted" and set(levels.values()) == {"restricted"}


def test_the_pod_security_checker_flags_what_restricted_forbids():
    _, worker = next((n, p) for n, p in _pod_templates() if n.endswith("vlsa-train a100"))
    assert podsecurity.level(worker) == "restricted"
    with_ipc_lock = copy.deepcopy(worker)
    with_ipc_lock["containers"][0]["securityContext"]["capabilities"]["add"] = ["IPC_LOCK"]
    assert podsecurity.level(with_ipc_lock) == "privileged"  # beyond baseline's capability list
    escalating = copy.deepcopy(worker)
    escalating["containers"][0]["securityContext"].pop("allowPrivilegeEscalation")
    assert podsecurity.level(escalating) == "baseline"


def test_ray_containers_have_read_only_roots_with_writable_scratch_and_hf_settings_from_secrets():
    for name, pod in _pod_templates():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is True, (name, container["name"])
            for mount in container.get("volumeMounts", []):
                assert "emptyDir" in volumes[mount["name"]] or mount.get("readOnly"), (name, mount)
    for _, doc in kuberay_documents():
        spec = _cluster_spec(doc)
        for pod in [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]:
            ray = pod["containers"][0]
            mounts = {m["mountPath"] for m in ray["volumeMounts"]}
            assert {"/tmp", "/scratch", "/home/ray/.cache"} <= mounts
            env = {e["name"]: e for e in ray["env"]}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}
            assert env["HF_HOME"]["value"].startswith("/scratch/")


def test_gpu_pods_ask_for_the_nvme_backed_ephemeral_storage_their_scratch_uses():
    for _, doc in kuberay_documents():
        for group in _cluster_spec(doc)["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            requests = pod["containers"][0]["resources"]["requests"]
            size = {v["name"]: v["emptyDir"].get("sizeLimit") for v in pod["volumes"]}
            as_gi = [int(str(size[n]).removesuffix("Gi")) for n in ("tmp", "scratch")]
            assert int(str(requests["ephemeral-storage"]).removesuffix("Gi")) >= sum(as_gi)


# ---- images ----


def test_every_image_in_the_manifests_is_pinned_by_digest():
    images = [c["image"] for _, pod in _pod_templates() for c in pod["containers"] if "image" in c]
    assert len(images) >= 13
    assert [image for image in images if not DIGEST.match(image)] == []
    assert not DIGEST.match("your-registry.example.com/vlsa-ray:0.1.0")


def test_dockerfiles_pin_bases_and_verify_the_installer():
    ray_file = (ROOT / "cluster" / "docker" / "ray.Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-cu130${RAY_BASE_DIGEST}" in ray_file
    assert 'sha256sum --check --strict' in ray_file and 'test -n "${EFA_INSTALLER_SHA256}"' in ray_file
    # The installer's version and its published SHA-256 are pinned together (a source cited beside them).
    pins = dict(re.findall(r"^ARG (EFA_INSTALLER_\w+)=(\S+)$", ray_file, re.M))
    assert pins == {"EFA_INSTALLER_VERSION": "1.38.0",
                    "EFA_INSTALLER_SHA256": "4f436954f35ad53754b4d005fd8d0be63de3b4184de41a695b504bdce0fecb22"}
    assert "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-verify.html" in ray_file
    assert 'torch.version.cuda.startswith("13.")' in ray_file
    mlflow_file = (ROOT / "cluster" / "docker" / "mlflow.Dockerfile").read_text()
    assert "FROM python:3.11-slim${PYTHON_BASE_DIGEST}" in mlflow_file


def test_the_walkthrough_installs_the_operator_pinned_by_digest():
    readme = (ROOT / "cluster" / "README.md").read_text()
    install = re.search(r"helm install kuberay-operator .*?(?=\n\s*```)", readme, re.S)[0]
    assert "--version 1.7.0" in install and "--set image.repository=quay.io/kuberay/operator" in install
    assert re.search(r"--set image\.tag=v1\.7\.0@sha256:[0-9a-f]{64}\s", install + "\n"), install


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for these simple patterns: a pattern matches the path or one of its parent folders."""
    from fnmatch import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if any(fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch(part, bare) for part in parts)
        ):  # fmt: skip
            return True
    return False


def test_dockerignore_keeps_local_state_and_secrets_out_of_images():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in [".venv/bin/python", "runs/x/model.pt", "mlruns/0/meta.yaml", ".env", "cluster/.env.local",
                 ".git/config", "vlsa/__pycache__/config.cpython-311.pyc", "outputs/a.json", "job.log"]:
        assert _dockerignored(path, patterns), path
    for path in ["requirements.txt", "pyproject.toml", "vlsa/config.py", "ray_jobs/train.py", "tune_spaces/lr.py",
                 "vlsa/presets/tiny.yaml"]:
        assert not _dockerignored(path, patterns), path
    gitignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    assert [g for g in gitignored if not _dockerignored(g.replace("*", "x"), patterns)] == []
