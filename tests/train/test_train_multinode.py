"""A multi-node rehearsal on one machine: a token-auth Ray head and a second ``ray start --address``
node (its own custom resource, scratch folder and processes), one training worker on each, Stage II
under ZeRO-3 with checkpoints on S3 (moto), driven by ``ray_jobs/train.py``. Mid-stage the second
node's processes are killed and the node is started again; Ray Train restarts the worker group, each
rank restores its own shard, and the losses of the following steps equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import history, small_overrides, stage_run

from cluster.local.processes import find_processes, free_port, spawn
from cluster.local.ray_head import RAY_BIN, start_ray_head, stop_ray_head
from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train.restore import rank_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NODE2 = "rehearsal_node2"
LOSS_KEYS = ("loss", "loss_lm", "loss_rec")
RESUMED = re.compile(r"stage2: rank (\d) resumed at step (\d+) from (\S+) \((\d+) bytes downloaded")


class SecondNode:
    """``ray start --address`` with one CPU and the ``NODE2`` resource; its processes share one session."""

    def __init__(self, head, scratch: Path, log: Path):
        self.head, self.scratch, self.log = head, scratch, log
        self.proc = None

    def start(self) -> None:
        args = [RAY_BIN, "start", "--address", self.head.address, "--node-ip-address", "127.0.0.1",
                "--temp-dir", self.head.temp_dir, "--num-cpus", "1", "--num-gpus", "0",
                "--resources", json.dumps({NODE2: 1}), "--disable-usage-stats", "--log-style", "record"]
        for name in ("node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port"):
            args += [f"--{name}", str(free_port())]
        env = {**os.environ, **self.head.auth_env, "VLSA_SCRATCH_DIR": str(self.scratch), **_SLOW_START}
        for _ in range(3):  # a raylet that misses Ray's start-up deadlines on a loaded machine: try again
            self.proc = spawn(args, env=env, log_path=self.log)
            if self.proc.wait(timeout=300) == 0:
                return
            self.kill()
        raise AssertionError(self.log.read_text()[-3000:])

    def kill(self) -> int:
        """SIGKILL every process of this node (raylet, agents, its workers), by process id."""
        victims = find_processes([self.proc.pid]) if self.proc else []
        for proc in victims:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)


# Ray's deadline for a node's agents to report their ports, longer for a loaded 2-core machine.
_SLOW_START = {"RAY_agent_register_timeout_ms": "120000"}


@pytest.fixture
def two_nodes(s3_server, tmp_path):
    """(head, second node), started after the S3 fixture: both nodes hold the (test) credentials."""
    head = start_ray_head(num_cpus=1, env={"VLSA_SCRATCH_DIR": str(tmp_path / "scratch-head"), **_SLOW_START})
    node = SecondNode(head, tmp_path / "scratch-node2", tmp_path / "node2.log")
    try:
        node.start()
        yield head, node
    finally:
        node.kill()
        stop_ray_head(head)


def _driver(head, overrides: list[str], log: Path) -> subprocess.Popen:
    env = {**head.client_env(), "RAY_ADDRESS": head.address, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "ray_jobs/train.py", "--config", "tiny", *overrides], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _summary(process: subprocess.Popen, log: Path) -> dict:
    assert process.wait(timeout=1800) == 0, log.read_text()[-4000:]
    return json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith('{"final')))


def _losses(tracking: str, run_id: str) -> dict[str, dict[int, float]]:
    run = stage_run(tracking, run_id, "stage2").info.run_id
    return {key: history(tracking, run, key) for key in LOSS_KEYS}


def _mid_stage2(run: str) -> bool:
    return any(c.stage == "stage2" and not c.final for c in ckpt.list_complete(run))


def test_a_killed_node_rejoins_and_each_rank_restores_its_own_shard(two_nodes, s3_server, train_demo, train_labels,
                                                                    cache_dir, tmp_path):
    head, node = two_nodes
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = storage.join(s3_server.make_bucket("rehearsal"), "runs")
    common = small_overrides(train_demo, cache_dir, workers=2, steps=4, labels=train_labels)
    common += [f"run.storage_path={root}", f"run.mlflow.tracking_uri={tracking}", "train.stages.0.max_steps=1",
               "run.start_timeout_s=300", "run.max_failures=2"]
    reference = _summary(_driver(head, [*common, "run.name=uninterrupted"], tmp_path / "reference.log"),
                         tmp_path / "reference.log")

    log, run = tmp_path / "rehearsal.log", storage.join(root, "rehearsal")
    start = time.monotonic()
    driver = _driver(head, [*common, "run.name=rehearsal"], log)
    while not _mid_stage2(run):
        assert driver.poll() is None, log.read_text()[-4000:]
        time.sleep(0.2)
    killed = node.kill()  # the second node, mid-stage II, right after a checkpoint
    time.sleep(5)
    node.start()
    outcome = _summary(driver, log)
    wall = time.monotonic() - start

    assert killed > 0
    resumed = {int(m[1]): m for m in RESUMED.finditer(log.read_text())}
    assert sorted(resumed) == [0, 1], "both ranks restored"
    report = {"wall_s": round(wall, 1), "killed_processes": killed}
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
    assert sorted(got["loss"]) == [1, 2, 3, 4] and got == expected
