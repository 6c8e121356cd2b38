"""A multi-node rehearsal on one machine: a token-auth Ray head and a second ``ray start --address``
node (its own custom resource, scratch folder and processes), both on 127.0.0.1, one training worker on each,
Stage II under ZeRO-3 with checkpoints on S3 (moto), driven by ``ray_jobs/train.py``. Mid-stage the second
node's processes are killed and the node is started again; Ray Train restarts the worker group, each
rank restores its own shard, and the losses of the following steps equal those of an uninterrupted run."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from train_helpers import driver_summary, history, launch_driver, small_overrides, stage_run

from cluster.local.processes import find_processes, free_port, spawn
from cluster.local.ray_head import LOOPBACK_ONLY, start_ray_head, stop_ray_head
from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train.restore import rank_files
from tests.tracking_db import sqlite_tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE2 = "rehearsal_node2"
LOSS_KEYS = ("loss", "loss_lm", "loss_rec")
RESUMED = re.compile(r"stage2: rank (\d) resumed at step (\d+) from (\S+) \((\d+) bytes downloaded")


class SecondNode:
    """``ray start --address`` with one CPU and the ``NODE2`` resource; its processes share one session."""

    def __init__(self, head, scratch: Path, log: Path):
        self.head, self.scratch, self.log = head, scratch, log
        self.proc = None

    def start(self) -> None:
        args = [sys.executable, "-c", _JOIN_ON_LOOPBACK, "start", "--address", self.head.address,
                "--node-ip-address", "127.0.0.1", "--temp-dir", self.head.temp_dir, "--num-cpus", "1",
                "--num-gpus", "0", "--resources", json.dumps({NODE2: 1}), "--disable-usage-stats",
                "--log-style", "record"]
        for name in ("node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port"):
            args += [f"--{name}", str(free_port())]
        env = {**os.environ, **self.head.auth_env, **LOOPBACK_ONLY, **CLUSTER_ENV}
        env["VLSA_SCRATCH_DIR"] = str(self.scratch)
        for _ in range(3):  # a raylet that misses Ray's start-up deadlines on a loaded machine: try again
            self.proc = spawn(args, env=env, log_path=self.log)
            if self.proc.wait(timeout=300) == 0:
                return
            self.kill()
        raise AssertionError(self.log.read_text()[-3000:])

    def kill(self) -> int:
        """SIGKILL every process of this node (raylet, agents, its workers), by process id; returns once
        they are gone."""
        victims = find_processes([self.proc.pid]) if self.proc else []
        for proc in victims:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs(victims, timeout=30)
        return len(victims)


# `ray start --address` for a node of a loopback-only head (LOOPBACK_ONLY). With multi-node clusters off,
# Ray refuses to add a node; with them on, it rewrites 127.0.0.1 (the head's address and this node's) to
# the machine's network address, where the head does not listen. So this one CLI process passes the
# multi-node check and resolves loopback to loopback; the node's own processes (raylet, agents, workers)
# inherit LOOPBACK_ONLY and stay on 127.0.0.1.
_JOIN_ON_LOOPBACK = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
"""

# Ray settings of this two-node cluster (every process reads them from its environment): a longer deadline
# for a node's agents to report their ports on a loaded 2-core machine, and a lost node noticed within
# seconds (a health check a second, five misses) instead of Ray's 15 s or more.
CLUSTER_ENV = {"RAY_agent_register_timeout_ms": "120000", "RAY_health_check_initial_delay_ms": "1000",
               "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@pytest.fixture
def two_nodes(s3_server, tmp_path):
    """(head, second node), started after the S3 fixture: both nodes hold the (test) credentials."""
    head = start_ray_head(num_cpus=1, env={"VLSA_SCRATCH_DIR": str(tmp_path / "scratch-head"), **CLUSTER_ENV})
    node = SecondNode(head, tmp_path / "scratch-node2", tmp_path / "node2.log")
    try:
        node.start()
        yield head, node
    finally:
        node.kill()
        stop_ray_head(head)


def _losses(tracking: str, run_id: str) -> dict[str, dict[int, float]]:
    run = stage_run(tracking, run_id, "stage2").info.run_id
    return {key: history(tracking, run, key) for key in LOSS_KEYS}


def _listening(proc: psutil.Process) -> list:
    try:
        return [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        return []


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def _mid_stage2(run: str) -> bool:
    return any(c.stage == "stage2" and not c.final for c in ckpt.list_complete(run))


def test_a_killed_node_rejoins_and_each_rank_restores_its_own_shard(two_nodes, s3_server, train_demo, train_labels,
                                                                    cache_dir, tmp_path):
    head, node = two_nodes
    tracking = sqlite_tracking_uri(tmp_path)
    root = storage.join(s3_server.make_bucket("rehearsal"), "runs")
    # Stage II alone (Stage I would add a model build, a step and a data pass to both runs and prove nothing
    # here), three steps: the node dies after the first checkpoint, so at least one step runs after each
    # rank's restore and is compared with the uninterrupted run.
    common = small_overrides(train_demo, cache_dir, workers=2, steps=3, labels=train_labels, stage2_only=True)
    common += [f"run.storage_path={root}", f"run.mlflow.tracking_uri={tracking}", "run.start_timeout_s=300",
               "run.max_failures=2"]
    phases, clock = {}, time.monotonic()
    reference_log = tmp_path / "reference.log"
    reference = driver_summary(launch_driver(head, [*common, "run.name=uninterrupted"], reference_log),
                               reference_log, timeout=1800)
    phases["reference_run"] = time.monotonic() - clock
    node_sockets = [c.laddr.ip for p in find_processes([node.proc.pid]) for c in _listening(p)]
    assert node_sockets and all(map(_loopback, node_sockets)), node_sockets  # the second node on loopback too

    log, run = tmp_path / "rehearsal.log", storage.join(root, "rehearsal")
    start = clock = time.monotonic()
    driver = launch_driver(head, [*common, "run.name=rehearsal"], log)
    while not _mid_stage2(run):
        assert driver.poll() is None, log.read_text()[-4000:]
        time.sleep(0.2)
    phases["to_first_stage2_checkpoint"], clock = time.monotonic() - clock, time.monotonic()
    killed = node.kill()  # the second node, mid-stage II, right after a checkpoint
    node.start()
    phases["node_killed_and_restarted"], clock = time.monotonic() - clock, time.monotonic()
    outcome = driver_summary(driver, log, timeout=1800)
    phases["restart_to_finish"] = time.monotonic() - clock
    wall = time.monotonic() - start

    assert killed > 0
    resumed = {int(m[1]): m for m in RESUMED.finditer(log.read_text())}
    assert sorted(resumed) == [0, 1], "both ranks restored"
    report = {"wall_s": round(wall, 1), "phases_s": {k: round(v, 1) for k, v in phases.items()},
              "killed_processes": killed}
    for rank, match in resumed.items():
        files = ckpt.read_json(match[3], ckpt.MANIFEST)["files"]
        share = sum(files[n]["size"] for n in rank_files({"files": files}, rank))
        downloaded = int(match[4])
        assert 0 < downloaded <= 1.1 * share, (rank, downloaded, share)  # each node its own copy of its share
        report[f"rank{rank}"] = {"resumed_at": int(match[2]), "downloaded": downloaded, "share": share,
                                 "checkpoint": sum(f["size"] for f in files.values())}
    print("rehearsal:", json.dumps(report))
    expected = _losses(tracking, reference["mlflow_run_id"])
    got = _losses(tracking, outcome["mlflow_run_id"])
    assert sorted(got["loss"]) == [1, 2, 3] and got == expected
