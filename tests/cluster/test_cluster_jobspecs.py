"""Every shipped job spec (KubeRay RayJobs, the README's ``ray job submit`` examples) evaluated at its declared
worker count and node shape: batch arithmetic per stage, workers and CPUs per node type, labels and storage
wiring, a sweep metric that can compare its space. The evaluation itself is shown to catch each defect."""

from __future__ import annotations

import dataclasses

import pytest

from tests.cluster.jobspecs import NODE_TYPES, JobSpec, all_specs, label_jobs, problems, readme_specs, rayjob_specs
from vlsa.config import ConfigError

SPECS = all_specs()
LABEL_JOBS = label_jobs(SPECS)
BUCKET = "s3://YOUR-BUCKET"
# The RayJob entrypoints as they were before the driver-side batch check and the labels wiring.
OLD_TRAIN = (f"python ray_jobs/train.py --config llava15_hd_vicuna7b_stage1 run.num_workers=32 run.use_gpu=true "
             f"run.storage_path={BUCKET}/vlsa/runs")
OLD_TUNE = (f"python ray_jobs/tune.py --space loss_ratio --config llava15_hd_vicuna7b_stage1 run.num_workers=8 "
            f"run.use_gpu=true run.storage_path={BUCKET}/vlsa/tune")


def _spec(kind: str) -> JobSpec:
    return next(s for s in rayjob_specs() if s.kind == kind)


def _with_argv(spec: JobSpec, command: str) -> JobSpec:
    return dataclasses.replace(spec, argv=tuple(command.split()))


def test_the_job_specs_are_found():
    kinds = sorted(s.kind for s in rayjob_specs())
    assert kinds == ["label", "train", "tune"]
    readme = {(s.kind, s.nodes[0].instance_type) for s in readme_specs()}
    assert {"label", "train", "tune"} <= {kind for kind, _ in readme}, "the README walks through every job"
    clusters = {s.cluster for s in readme_specs()}
    assert clusters == {"cluster/aws/vlsa-a100.yaml", "cluster/k8s/raycluster.yaml"}, clusters


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.source}:{s.kind}")
def test_every_shipped_job_spec_runs_as_declared(spec):
    assert problems(spec, LABEL_JOBS) == []


def test_the_old_train_spec_fails_the_batch_check_naming_what_would_work():
    found = problems(_with_argv(_spec("train"), OLD_TRAIN), LABEL_JOBS)
    batch = next(p for p in found if "batch arithmetic" in p)
    assert "stage stage1: global_batch 128 is not a multiple of micro_batch 16 x workers 32" in batch
    assert "micro_batch may be [1, 2, 4]" in batch and "workers may be [1, 2, 4, 8]" in batch
    assert any("data.labels is 'empty (every worker labels)'" in p and "labels/llava558k" in p for p in found)


def test_the_old_tune_spec_ranks_loss_ratios_on_the_weighted_loss():
    found = problems(_with_argv(_spec("tune"), OLD_TUNE), LABEL_JOBS)
    assert any(p.startswith("tune.metric='loss' is the weighted sum") for p in found), found


def test_placement_and_label_checks_catch_what_does_not_fit():
    train = _spec("train")
    command = " ".join(train.argv)
    too_many = command.replace("run.num_workers=32", "run.num_workers=64") + " train.stages.0.micro_batch=2"
    assert any("64 GPU workers, the cluster has 32 GPUs" in p for p in problems(_with_argv(train, too_many), []))
    greedy = command + " run.cpus_per_worker=12"
    assert any("8 workers x 12 CPUs > 90.0 CPUs per node" in p for p in problems(_with_argv(train, greedy), LABEL_JOBS))
    wrong_kind = command + " run.accelerator_type=A100-80G"
    assert problems(_with_argv(train, wrong_kind), LABEL_JOBS) == ["run.accelerator_type='A100-80G': no node group of that kind"]
    label = _spec("label")
    no_wait = " ".join(a for a in label.argv if not a.startswith("label.min_gpus"))
    assert any(p.startswith("label.min_gpus=0") for p in problems(_with_argv(label, no_wait), []))


def test_node_groups_match_their_instance_types():
    for spec in SPECS:
        for group in spec.nodes:
            shape = NODE_TYPES[group.instance_type]
            assert (group.gpus, group.accelerator) == (shape["gpus"], shape["accelerator"]), spec.source
    kinds = {g.instance_type for s in readme_specs() for g in s.nodes}
    assert kinds == {"p4d.24xlarge", "p4de.24xlarge"}, "the 80 GB node type beside the 40 GB one"


@pytest.mark.parametrize("script", ["train", "tune"])
def test_the_entry_points_check_the_batch_before_ray_starts(script):
    import ray

    from tests.cluster.jobspecs import job_module

    old = OLD_TRAIN if script == "train" else OLD_TUNE.replace("run.num_workers=8", "run.num_workers=32")
    argv = old.split()[2:] + (["tune.metric=loss_lm"] if script == "tune" else [])
    with pytest.raises(ConfigError, match="stage stage1: global_batch 128 is not a multiple"):
        job_module(f"ray_jobs/{script}.py").main(argv)
    assert not ray.is_initialized()
