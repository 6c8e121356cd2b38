"""Every job spec shipped in cluster/ evaluated as it would run: its entrypoint parsed by the job's own
CLI and its config loaded, then checked against the nodes it declares.

Job specs come from the KubeRay RayJobs (the worker groups they bring up) and from the ``ray job submit``
examples of cluster/README.md (the cluster of the section they are in: the launcher config or the long-lived
RayCluster, at its maximum size).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from dataclasses import dataclass
from functools import cache

from tests.cluster.manifests import CLUSTER, ROOT, kuberay_documents, yaml_documents

# What EC2 documents for the A100 instance types; Ray names the GPU sizes A100-40G / A100-80G.
NODE_TYPES = {
    "p4d.24xlarge": {"vcpus": 96, "memory_gib": 1152, "gpus": 8, "gpu_memory_gb": 40, "accelerator": "A100-40G"},
    "p4de.24xlarge": {"vcpus": 96, "memory_gib": 1152, "gpus": 8, "gpu_memory_gb": 80, "accelerator": "A100-80G"},
}
LAUNCHER = CLUSTER / "aws" / "vlsa-a100.yaml"
RAYCLUSTER = CLUSTER / "k8s" / "raycluster.yaml"
README = CLUSTER / "README.md"


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of one kind that a job's cluster has (or scales up to)."""

    instance_type: str
    count: int
    cpus: float
    """Logical CPUs Ray gives each node."""
    gpus: int
    accelerator: str


@dataclass(frozen=True)
class JobSpec:
    source: str
    argv: tuple[str, ...]
    nodes: tuple[NodeGroup, ...]
    cluster: str = ""
    """The cluster config the job runs on."""

    @property
    def kind(self) -> str:
        return self.argv[1].removeprefix("ray_jobs/").removesuffix(".py")

    def resources(self, accelerator: str = "") -> dict[str, float]:
        """What ``ray.cluster_resources()`` reports with every node up (of one GPU size, if given)."""
        groups = [g for g in self.nodes if not accelerator or g.accelerator == accelerator]
        return {"CPU": sum(g.cpus * g.count for g in groups), "GPU": float(sum(g.gpus * g.count for g in groups))}


# ----------------------------------------------------------------------------------------- sources


def _quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _accelerator(start_params: dict) -> str:
    resources = json.loads(json.loads(start_params.get("resources", '"{}"')))
    return next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), "")


def kuberay_groups(cluster_spec: dict, size: str) -> tuple[NodeGroup, ...]:
    """Worker groups of a RayCluster spec; ``size`` is ``replicas`` (a RayJob) or ``maxReplicas``."""
    groups = []
    for group in cluster_spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        cpus = _quantity(group["rayStartParams"].get("num-cpus", limits["cpu"]))
        groups.append(NodeGroup(pod["nodeSelector"]["node.kubernetes.io/instance-type"], int(group[size]), cpus,
                                int(limits.get("nvidia.com/gpu", 0)), _accelerator(group["rayStartParams"])))
    return tuple(groups)


def launcher_groups() -> tuple[NodeGroup, ...]:
    (config,) = yaml_documents(LAUNCHER)
    groups = []
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        shape = NODE_TYPES[node["node_config"]["InstanceType"]]
        resources = node.get("resources", {})
        accelerator = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), "")
        groups.append(NodeGroup(node["node_config"]["InstanceType"], node["max_workers"],
                                resources.get("CPU", shape["vcpus"]), resources.get("GPU", shape["gpus"]), accelerator))
    return tuple(groups)


def rayjob_specs() -> list[JobSpec]:
    return [
        JobSpec(f"{path.relative_to(ROOT)}", tuple(shlex.split(doc["spec"]["entrypoint"])),
                kuberay_groups(doc["spec"]["rayClusterSpec"], "replicas"), f"{path.relative_to(ROOT)}")
        for path, doc in kuberay_documents() if doc["kind"] == "RayJob"
    ]  # fmt: skip


def readme_specs(text: str | None = None) -> list[JobSpec]:
    """The ``ray job submit ... -- python ray_jobs/X.py --config ...`` commands of the README, each run on the
    cluster its section is about (a heading naming the launcher/AWS or Kubernetes/EKS/KubeRay)."""
    text = README.read_text() if text is None else text
    clusters = {"launcher": (launcher_groups(), LAUNCHER), "k8s": (_raycluster_groups(), RAYCLUSTER)}
    specs, where, in_code = [], None, False
    for number, line in _joined_lines(text):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            where = _cluster_of_heading(line) or (where if line.startswith("###") else None)
        elif in_code and "ray job submit" in line and " -- python ray_jobs/" in line and "--config" in line:
            argv = shlex.split(line.split(" -- ", 1)[1], comments=True)
            if where is None:
                raise AssertionError(f"README line {number}: a job example outside a launcher or Kubernetes section")
            nodes, path = clusters[where]
            specs.append(JobSpec(f"cluster/README.md:{number}", tuple(argv), nodes, f"{path.relative_to(ROOT)}"))
    return specs


def _joined_lines(text: str):
    """(first line number, line) with backslash continuations joined."""
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", 0


def _cluster_of_heading(line: str) -> str | None:
    lowered = line.lower()
    if any(word in lowered for word in ("launcher", "aws vms")):
        return "launcher"
    if any(word in lowered for word in ("kubernetes", "eks", "kuberay")):
        return "k8s"
    return None


def _raycluster_groups() -> tuple[NodeGroup, ...]:
    (doc,) = yaml_documents(RAYCLUSTER)
    return kuberay_groups(doc["spec"], "maxReplicas")


def all_specs() -> list[JobSpec]:
    return rayjob_specs() + readme_specs()


# ------------------------------------------------------------------------------------------ checks


@cache
def job_module(script: str):
    spec = importlib.util.spec_from_file_location(f"_job_{script.replace('/', '_')}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: JobSpec):
    """(parsed arguments, config) exactly as the job's entry point gets them."""
    from vlsa.config import load_config

    assert spec.argv[0] == "python" and (ROOT / spec.argv[1]).is_file(), spec.argv[:2]
    args = job_module(spec.argv[1]).parse_args(list(spec.argv[2:]))
    return args, load_config(args.config, args.overrides)


def problems(spec: JobSpec, label_jobs: list[JobSpec]) -> list[str]:
    """Why ``spec`` would not run as shipped on its nodes; [] when it would."""
    args, cfg = load(spec)
    found = _node_problems(spec)
    if spec.kind == "label":
        return found + _label_problems(spec, args, cfg)
    found += _batch_problems(cfg) + _placement_problems(spec, cfg) + _labels_wiring(cfg, label_jobs)
    if not cfg.run.storage_path.startswith("s3://"):
        found.append(f"run.storage_path {cfg.run.storage_path!r} is node-local: workers on other nodes cannot see it")
    if spec.kind == "tune":
        found += _sweep_problems(args, cfg)
    return found


def _node_problems(spec: JobSpec) -> list[str]:
    found = []
    for group in spec.nodes:
        shape = NODE_TYPES.get(group.instance_type)
        if shape is None:
            found.append(f"unknown node type {group.instance_type}")
            continue
        if group.gpus != shape["gpus"] or group.cpus > shape["vcpus"]:
            found.append(f"{group.instance_type}: {group.gpus} GPUs / {group.cpus} CPUs per node declared, the node "
                         f"has {shape['gpus']} / {shape['vcpus']}")
        if group.accelerator != shape["accelerator"]:
            found.append(f"{group.instance_type}: labelled {group.accelerator!r}, its GPUs are {shape['accelerator']}")
    return found


def _batch_problems(cfg) -> list[str]:
    from vlsa.config import ConfigError, check_batches

    try:
        check_batches(cfg)
    except ConfigError as err:
        return [str(err)]
    return []


def _placement_problems(spec: JobSpec, cfg) -> list[str]:
    """Training workers (and, for a sweep, one trial's driver) fit on the GPU size the job asks for."""
    from vlsa.tune.resources import DRIVER_CPUS, max_concurrent

    run = cfg.run
    groups = [g for g in spec.nodes if not run.accelerator_type or g.accelerator == run.accelerator_type]
    if not run.use_gpu:
        return ["run.use_gpu is false on a GPU cluster: training would run on CPUs"]
    if not groups:
        return [f"run.accelerator_type={run.accelerator_type!r}: no node group of that kind"]
    found = []
    driver = DRIVER_CPUS if spec.kind == "tune" else 0
    for group in groups:
        per_node = min(group.gpus, run.num_workers)
        if per_node * run.cpus_per_worker + driver > group.cpus:
            found.append(f"{group.instance_type}: {per_node} workers x {run.cpus_per_worker} CPUs"
                         f"{' + a trial driver' if driver else ''} > {group.cpus} CPUs per node")
    resources = spec.resources(run.accelerator_type)
    if spec.kind == "tune":
        try:
            max_concurrent(cfg, resources)
        except RuntimeError as err:
            found.append(str(err))
    elif resources["GPU"] < run.num_workers:
        found.append(f"run.num_workers={run.num_workers} GPU workers, the cluster has {resources['GPU']:.0f} GPUs")
    return found


def _label_identity(cfg) -> dict:
    """The config parts the labels depend on that are known without downloading any model (the labeling
    job fingerprints the weights themselves; two specs naming the same parts get the same weights)."""
    model = cfg.model
    part = lambda p: (p.path, p.subfolder, p.init)  # noqa: E731
    return {"vq": part(model.vq), "vae": part(model.recon.vae),
            "vq_image_size": model.vq_image_size, "recon_image_size": model.recon.image_size,
            "vision": (model.vision.path, model.vision.init)}


def _labels_wiring(cfg, label_jobs: list[JobSpec]) -> list[str]:
    """Each stage that uses labels (reconstruction, SSFT) reads those the label job wrote for its data."""
    written = {}
    for job in label_jobs:
        args, label_cfg = load(job)
        written[args.data] = (args.output, label_cfg, job.source)
    found = []
    for stage in cfg.train.stages:
        if not (cfg.model.recon.enabled or stage.data.ssft.p_vq > 0 or stage.data.ssft.p_px > 0):
            continue
        if stage.data.train not in written:
            found.append(f"stage {stage.name} needs labels of {stage.data.train}; no label job writes them")
            continue
        output, label_cfg, source = written[stage.data.train]
        if stage.data.labels != output:
            found.append(f"stage {stage.name}: data.labels is {stage.data.labels or 'empty (every worker labels)'!r}, "
                         f"the label job ({source}) writes {output}")
        elif _label_identity(label_cfg) != _label_identity(cfg):
            found.append(f"stage {stage.name}: the labels at {output} come from a different model/geometry")
    return found


def _label_problems(spec: JobSpec, args, cfg) -> list[str]:
    """A label job uses the GPUs of its cluster and waits for them to join."""
    from vlsa.labels.pipeline import plan_pool

    found = []
    resources = spec.resources()
    if cfg.label.gpus_per_actor < 1:
        found.append(f"label.gpus_per_actor={cfg.label.gpus_per_actor}: the models would run on CPUs")
    if not 0 < cfg.label.min_gpus <= resources["GPU"]:
        found.append(f"label.min_gpus={cfg.label.min_gpus}: the job must wait for GPU nodes to join (the cluster "
                     f"starts without them) and for no more than the {resources['GPU']:.0f} it can have")
    plan = plan_pool(resources, cfg.label, pending=10**6)
    if plan.actors * plan.actor_gpus < resources["GPU"]:
        found.append(f"{plan.actors} labeling actors x {plan.actor_gpus} GPU leave GPUs of {resources['GPU']:.0f} idle")
    for name, path in (("--data", args.data), ("--image-root", args.image_root), ("--output", args.output)):
        if not path.startswith("s3://"):
            found.append(f"{name} {path!r} is not on S3")
    return found


def _sweep_problems(args, cfg) -> list[str]:
    from tune_spaces import build_space
    from vlsa.tune.sweep import metric_problem

    problem = metric_problem(cfg, build_space(args.space, cfg, args.only))
    return [problem] if problem else []


def label_jobs(specs: list[JobSpec]) -> list[JobSpec]:
    return [s for s in specs if s.kind == "label"]


