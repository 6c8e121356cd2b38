"""A multi-node rehearsal on one machine: a token-auth Ray head and a second ``ray start --address``
node (its own custom resource, scratch folder and processes), one training worker on each, Stage II
under ZeRO-3 with checkpoints on S3 (moto). Mid-stage the second node's processes are killed and the
node is started again; Ray Train restarts the worker group, each rank restores its own shard, and the
losses of the following steps equal those of an uninterrupted run."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from train_helpers import history, small_config, stage_run

from cluster.local.processes import find_processes, free_port, spawn
from cluster.local.ray_head import RAY_BIN, start_ray_head, stop_ray_head
from tests.services import patched_environ
from vlsa.io import storage
from vlsa.train import checkpoint as ckpt
from vlsa.train.driver import train
from vlsa.train.loop import Hooks, train_worker
from vlsa.train.restore import rank_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE2 = "rehearsal_node2"
LOSS_KEYS = ("loss", "loss_lm", "loss_rec")


class SecondNode:
    """``ray start --address`` with one CPU and the ``NODE2`` resource; its processes share one session."""

    def __init__(self, head, scratch: Path, log: Path):
        self.head, self.scratch, self.log = head, scratch, log
        self.proc = None

    def start(self) -> None:
        args = [RAY_BIN, "start", "--address", self.head.address, "--node-ip-address", "127.0.0.1",
                "--temp-dir", self.head.temp_dir,
                "--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps({NODE2: 1}),
                "--disable-usage-stats", "--log-style", "record"]
        for name in ("node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port"):
            args += [f"--{name}", str(free_port())]
        env = {**os.environ, **self.head.auth_env, "VLSA_SCRATCH_DIR": str(self.scratch)}
        self.proc = spawn(args, env=env, log_path=self.log)
        assert self.proc.wait(timeout=180) == 0, self.log.read_text()[-3000:]

    def processes(self) -> list:
        return find_processes([self.proc.pid]) if self.proc else []

    def kill(self) -> int:
        """SIGKILL every process of this node (raylet, agents, its workers), by process id."""
        victims = self.processes()
        for proc in victims:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)


@pytest.fixture
def two_nodes(s3_server, tmp_path):
    """(head, second node): Ray started after the S3 fixture, so both nodes hold the (test) credentials."""
    import ray

    head = start_ray_head(num_cpus=1, env={"VLSA_SCRATCH_DIR": str(tmp_path / "scratch-head")})
    node = SecondNode(head, tmp_path / "scratch-node2", tmp_path / "node2.log")
    try:
        node.start()
        with patched_environ({**head.auth_env}, unset=("RAY_ADDRESS",)):
            ray.init(address=head.address)
            try:
                yield head, node
            finally:
                ray.shutdown()
    finally:
        node.kill()
        stop_ray_head(head)


def _hooks(markers: str, run_dir: str) -> Hooks:
    """Stage II step 2, once the step-1 checkpoint is stored: tell the test to kill the second node and
    wait for it (the head's worker then fails on its next collective). Restores are recorded."""
    import ray

    def after_step(info) -> None:
        if (info.stage, info.step) != ("stage2", 2) or Path(markers, "killed").exists():
            return
        while not any(c.stage == "stage2" and c.step == 1 for c in ckpt.list_complete(run_dir)):
            time.sleep(0.2)
        Path(markers, f"reached-{info.rank}").write_text("")
        deadline = time.monotonic() + 300
        while not Path(markers, "killed").exists() and time.monotonic() < deadline:
            time.sleep(0.2)

    def after_restore(info, fetched) -> None:
        record = {"rank": info.rank, "stage": info.stage, "step": info.step, "downloaded": fetched.downloaded,
                  "files": list(fetched.files), "node": ray.get_runtime_context().get_node_id(),
                  "folder": str(fetched.folder)}
        Path(markers, f"restore-{info.rank}.json").write_text(json.dumps(record))

    return Hooks(after_step=after_step, after_restore=after_restore)


def _killer(node: SecondNode, markers: Path, killed: list) -> None:
    """Kills the second node once both workers reached the point, then starts it again."""
    deadline = time.monotonic() + 900
    while len(list(markers.glob("reached-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    killed.append(node.kill())
    (markers / "killed").write_text("")
    time.sleep(5)
    node.start()


def _losses(tracking: str, run_id: str) -> dict[str, dict[int, float]]:
    run = stage_run(tracking, run_id, "stage2").info.run_id
    return {key: history(tracking, run, key) for key in LOSS_KEYS}


def test_a_killed_node_rejoins_and_each_rank_restores_its_own_shard(two_nodes, s3_server, train_demo, cache_dir,
                                                                    tmp_path):
    import ray

    head, node = two_nodes
    assert sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get(NODE2)) == 1
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = storage.join(s3_server.make_bucket("rehearsal"), "runs")
    extra = ("train.stages.0.max_steps=1", "run.start_timeout_s=300", "run.max_failures=2")
    reference = train(small_config(train_demo, cache_dir, root, "uninterrupted", tracking, workers=2, extra=extra))

    markers = tmp_path / "markers"
    markers.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=_killer, args=(node, markers, killed), daemon=True)
    killer.start()
    run_dir = ckpt.run_uri(root, "rehearsal")
    cfg = small_config(train_demo, cache_dir, root, "rehearsal", tracking, workers=2, extra=extra)
    start = time.monotonic()
    outcome = train(cfg, train_fn=functools.partial(train_worker, hooks=_hooks(str(markers), run_dir)))
    wall = time.monotonic() - start
    killer.join(timeout=60)

    assert killed and killed[0] > 0, "the second node had no process to kill"
    node2 = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(NODE2)}
    records = [json.loads((markers / f"restore-{rank}.json").read_text()) for rank in (0, 1)]
    files = ckpt.read_json(storage.join(run_dir, ckpt.checkpoint_name(1, "stage2", 1)), ckpt.MANIFEST)["files"]
    report = {"wall_s": round(wall, 1)}
    for record in records:
        assert (record["stage"], record["step"]) == ("stage2", 1)
        share = sum(files[n]["size"] for n in rank_files({"files": files}, record["rank"]))
        assert record["files"] == rank_files({"files": files}, record["rank"])
        assert 0 < record["downloaded"] <= 1.1 * share  # each node its own copy: both ranks download
        report[f"rank{record['rank']}"] = {"downloaded": record["downloaded"], "share": share,
                                           "checkpoint": sum(f["size"] for f in files.values()),
                                           "on_node2": record["node"] in node2}
    assert sorted(r["on_node2"] for r in report.values() if isinstance(r, dict)) == [False, True]
    print("rehearsal:", json.dumps(report))
    expected = _losses(tracking, reference.mlflow_run_id)
    got = _losses(tracking, outcome.mlflow_run_id)
    assert sorted(got["loss"]) == [1, 2, 3] and got == expected
