"""MLflow tracking: one run per job, one nested run per stage.

The driver opens (or, for a re-run with the same name, reopens) the parent run and logs the
resolved config as flattened params; rank 0 of the workers logs per-step metrics (asynchronously:
a step never waits for the server), the stage's data as a dataset input and the reconstruction grids
to the stage's nested run, where each node also logs its system metrics. Experiments are created as
model-training experiments, and a finished job's final checkpoint becomes a logged (and registered)
model of its run. Everything goes through ``MlflowClient`` with
explicit run ids, so no process-global "active run" is involved. Secrets never reach MLflow:
keys that name one are masked and credentials inside URLs are stripped.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from vlsa.config import flatten

PARENT_TAG = "mlflow.parentRunId"
RUN_TAG = "vlsa.run"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment kind: the UI's experiment-type selector reads and writes this tag."""
MODEL_TRAINING = "custom_model_development"
"""The kind MLflow's UI calls "Machine learning" (runs, charts, artifacts); the other is ``genai_development``."""
MODEL_TAG = "vlsa.model_id"
STAGE_TAG = "vlsa.stage"
MASK = "***"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|api_?key|access_?key|private_?key|auth)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def tracking_uri(configured: str) -> str:
    """The config's URI, else ``MLFLOW_TRACKING_URI``, else a local store in ``./mlruns``.

    The local store is a SQLite database ``./mlruns/mlflow.db`` with the artifacts beside it (MLflow
    no longer accepts new runs in a plain folder store); the path is made absolute for the workers.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    folder = Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def redact(key: str, value: Any) -> str:
    """The param value MLflow may see: masked for secret-looking keys, URL credentials stripped, capped."""
    if _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
        return MASK
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", str(value))
    return text[:MAX_PARAM_LENGTH]


def config_params(config: dict[str, Any]) -> dict[str, str]:
    """The resolved config as flattened ``a.b.c -> value`` params, secrets masked."""
    return {key: redact(key, value) for key, value in flatten(config).items()}


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment ``name``, created when missing, as a model-training experiment (one without
    a kind gets it; a kind someone chose in the UI is kept)."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:  # another job created it meanwhile
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def experiment_link(uri: str, mlflow_client, run_id: str) -> str:
    """The UI page of the run's experiment in the model-training view ("" for a store without a UI).

    MLflow 3.17's UI picks GenAI or model-training pages from its sidebar switch (kept per browser,
    GenAI at first); the ``workflowType`` query sets it, so this link opens on the runs table."""
    if not uri.startswith(("http://", "https://")):
        return ""
    exp_id = mlflow_client.get_run(run_id).info.experiment_id
    host = _URL_USERINFO.sub(lambda m: m.group("scheme"), uri.rstrip("/"))
    return f"{host}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"


def _find_run(mlflow_client, exp_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"],
                                     max_results=1)
    return runs[0].info.run_id if runs else None


def open_parent_run(uri: str, experiment: str, run_name: str, run_key: str, params: dict[str, str]) -> str:
    """The job's run: reopened when a run with the same ``run_key`` exists (a re-run continues it).

    Params are immutable in MLflow, so a reopened run gets only the params it lacks; changed
    values are listed in the ``vlsa.changed_params`` tag instead.
    """
    from mlflow.entities import Param, RunTag

    mlflow_client = client(uri)
    exp_id = experiment_id(mlflow_client, experiment)
    run_id = _find_run(mlflow_client, exp_id, {RUN_TAG: run_key, "vlsa.kind": "job"})
    if run_id is None:
        tags = {RUN_TAG: run_key, "vlsa.kind": "job"}
        run_id = mlflow_client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        known: dict[str, str] = {}
    else:
        mlflow_client.update_run(run_id, status="RUNNING")
        known = mlflow_client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in known]
    changed = sorted(k for k, v in params.items() if k in known and known[k] != v)
    tags = [RunTag("vlsa.changed_params", ",".join(changed)[:MAX_PARAM_LENGTH])] if changed else []
    log_params(mlflow_client, run_id, new, tags)
    return run_id


def log_params(mlflow_client, run_id: str, params: list, tags: list = ()) -> None:
    """``Param`` entities in batches of 100 (MLflow's limit per call); ``tags`` go with the first batch."""
    if not params and not tags:
        return
    for start in range(0, max(len(params), 1), 100):
        mlflow_client.log_batch(run_id, params=params[start:start + 100], tags=list(tags) if start == 0 else [])


def close_run(uri: str, run_id: str, ok: bool) -> None:
    client(uri).set_terminated(run_id, status="FINISHED" if ok else "FAILED")


class StageTracker:
    """Per-step metrics and images of one stage, logged to a run nested under the job's run."""

    def __init__(self, uri: str, parent_run_id: str, stage: str) -> None:
        self.client = client(uri)
        parent = self.client.get_run(parent_run_id)
        exp_id = parent.info.experiment_id
        tags = {PARENT_TAG: parent_run_id, STAGE_TAG: stage}
        # A resumed stage keeps logging to the run it started.
        found = _find_run(self.client, exp_id, tags)
        self.run_id = found or self.client.create_run(exp_id, run_name=stage, tags=tags).info.run_id
        self.pending: list = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics of one optimizer step (``step``: 1-based within the stage), queued: MLflow's async
        logging sends them in the background, so a slow server never stalls the step."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        self.pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))
        if len(self.pending) > 64:  # keep only the operations not sent yet
            self.pending = [op for op in self.pending if not all(f.done() for f in op._operation_futures)]

    def flush(self) -> None:
        """Wait until every queued metric reached the server (raises on one that failed)."""
        pending, self.pending = self.pending, []
        for operation in pending:
            operation.wait()

    def log_dataset(self, name: str, source: str, digest: str, context: str = "train", profile: str = "") -> None:
        """A dataset input of the stage's run (the Datasets column and the run page show it)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with warnings.catch_warnings():  # a local path matches two equivalent source kinds: MLflow warns
            warnings.simplefilter("ignore", UserWarning)
            where = resolve_dataset_source(redact("source", source))  # a local or s3:// artifact source
        meta = MetaDataset(where, name=name, digest=digest[:36])._to_mlflow_entity()
        entity = Dataset(meta.name, meta.digest, meta.source_type, meta.source, meta.schema, profile or None)
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])

    def log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        new = [Param(k, redact(k, v)) for k, v in params.items() if k not in known]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def finish(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status="FINISHED")


def log_final_model(uri: str, run_id: str, name: str, checkpoint: str, register: bool) -> str:
    """The job's final checkpoint as a logged model of its run (the experiment's Models tab), and, with
    ``register``, a new version of registered model ``name`` (the Models page); returns its model id.

    The model points at the checkpoint (its ``vlsa.checkpoint`` tag and ``checkpoint.json``) rather
    than copying the weights. A run that already has its model (a re-run of a finished job) keeps it.
    """
    import json
    import tempfile

    from mlflow.entities import LoggedModelOutput

    mlflow_client = client(uri)
    run = mlflow_client.get_run(run_id)
    if MODEL_TAG in run.data.tags:
        return run.data.tags[MODEL_TAG]
    model = mlflow_client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                              tags={"vlsa.checkpoint": redact("checkpoint", checkpoint)},
                                              model_type="vlsa")
    with tempfile.TemporaryDirectory() as folder:
        pointer = Path(folder) / "checkpoint.json"
        pointer.write_text(json.dumps({"checkpoint": redact("checkpoint", checkpoint), "run_id": run_id}))
        mlflow_client.log_model_artifact(model.model_id, str(pointer))
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    if register:
        _register(mlflow_client, name, model.model_id, run_id)
    mlflow_client.set_tag(run_id, MODEL_TAG, model.model_id)
    return model.model_id


def _register(mlflow_client, name: str, model_id: str, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name, description="VLSA runs' final checkpoints (vlsa.checkpoint tag)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with _process_tracking_uri(mlflow_client.tracking_uri):
        mlflow_client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                           tags={"vlsa.checkpoint_of": run_id})


@contextlib.contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's registry finds the logged model of a ``models:/`` source through the process's tracking URI,
    not the client's: set it to the client's for the call (a SQLite database otherwise looks elsewhere)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
