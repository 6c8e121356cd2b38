"""The AWS launcher config: valid for the pinned Ray, CPU head, A100 workers, no keys, EFA set up."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.cluster.manifests import CLUSTER, launcher_configs, ray_schema, yaml_documents

AWS = CLUSTER / "aws" / "vlsa-a100.yaml"


def _load(path=AWS) -> dict:
    (config,) = yaml_documents(path)
    return config


def test_the_aws_config_is_found_as_a_launcher_config():
    assert AWS in launcher_configs()


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_launcher_config_validates_against_the_ray_schema(path):
    jsonschema.validate(_load(path), ray_schema())


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_checks_after_defaults(path):
    # What `ray up` runs: provider defaults merged in, then the schema and the node-type checks.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_load(path))))


def test_the_schema_rejects_a_broken_config():
    broken = _load()
    broken["available_node_types"]["a100"]["resources"] = {"GPU": "eight"}
    with pytest.raises(jsonschema.ValidationError, match="eight"):
        jsonschema.validate(broken, ray_schema())


def test_head_is_cpu_only_and_workers_are_p4d_and_p4de_with_bounds():
    config = _load()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))
    workers = {name: node for name, node in nodes.items() if name != config["head_node_type"]}
    kinds = {node["node_config"]["InstanceType"]: node["resources"] for node in workers.values()}
    assert kinds == {"p4d.24xlarge": {"accelerator_type:A100-40G": 1}, "p4de.24xlarge": {"accelerator_type:A100-80G": 1}}
    for node in workers.values():
        assert 0 == node["min_workers"] <= node["max_workers"] <= config["max_workers"]  # both scale from zero
        assert [i["InterfaceType"] for i in node["node_config"]["NetworkInterfaces"]] == ["efa"] * 4
    assert sum(node["max_workers"] for node in workers.values()) == config["max_workers"]


def test_nodes_use_instance_profiles_imdsv2_and_no_keys():
    config = _load()
    for name, node in config["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Name"], name
        assert node["node_config"]["MetadataOptions"]["HttpTokens"] == "required", name
    assert set(config["auth"]) == {"ssh_user"}, "no key material in the launcher config"
    assert "AWS_ACCESS_KEY_ID" not in AWS.read_text() and "AWS_SECRET_ACCESS_KEY" not in AWS.read_text()


def test_setup_installs_requirements_and_runs_the_node_setup():
    config = _load()
    assert config["file_mounts"]["~/vlsa"] == "."
    setup = config["setup_commands"]
    steps = [next(i for i, c in enumerate(setup) if text in c) for text in (
        "sys.version_info", "python3 -m venv ~/venv", "bash ~/vlsa/cluster/aws/node-setup.sh",
        "pip install --quiet -r ~/vlsa/requirements.txt")]  # fmt: skip
    assert steps == sorted(steps), "check Python, make the venv (node-setup uses it), set up, install"


def test_setup_checks_python_and_the_driver_the_pinned_wheels_need():
    setup = "\n".join(_load()["setup_commands"])
    assert "assert v >= (3, 11)" in setup
    assert "driver_version" in setup and "-ge 580" in setup
    # The same floor as the package metadata.
    assert 'requires-python = ">=3.11"' in (CLUSTER.parent / "pyproject.toml").read_text()


def test_node_setup_puts_scratch_on_nvme_and_hf_settings_in_the_environment():
    script = (CLUSTER / "aws" / "node-setup.sh").read_text()
    assert "Amazon EC2 NVMe Instance Storage" in script and "/opt/dlami/nvme" in script
    for line in ["HF_HOME=/scratch/huggingface", "TMPDIR=/scratch/tmp", "ln -sfn /scratch/vlsa-cache ~/.cache/vlsa"]:
        assert line in script
    assert 'HF_SECRET="${VLSA_HF_SECRET:-vlsa/hf-token}"' in script and "HF_TOKEN=%q" in script


def test_node_setup_writes_nccl_efa_settings_and_fetches_secrets_through_the_role():
    script = (CLUSTER / "aws" / "node-setup.sh").read_text()
    for line in ["FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "FI_EFA_FORK_SAFE=1", "NCCL_SOCKET_IFNAME=^lo,docker"]:
        assert line in script
    assert "umask 077" in script and "aws secretsmanager get-secret-value" in script
    assert "X-aws-ec2-metadata-token" in script  # IMDSv2 session, as the node config requires


def test_start_commands_turn_token_auth_on_and_keep_the_dashboard_on_loopback():
    config = _load()
    keys = ("head_start_ray_commands", "worker_start_ray_commands")
    starts = [c for key in keys for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    assert all("export RAY_AUTH_MODE=token" in c and ". ~/.vlsa/env" in c for c in starts)
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
