"""The one-machine dev stack (``python -m cluster.local``) and the service launchers the tests share."""

from cluster.local.jobs import submit_job
from cluster.local.mlflow_server import MlflowServer, start_mlflow_server, stop_mlflow_server, wait_mlflow_server
from cluster.local.ray_head import RayHead, start_ray_head, stop_ray_head, wait_ray_head
from cluster.local.s3_server import S3Server, start_s3_server, stop_s3_server

__all__ = [
    "MlflowServer", "RayHead", "S3Server", "start_mlflow_server", "start_ray_head", "start_s3_server",
    "stop_mlflow_server", "stop_ray_head", "stop_s3_server", "submit_job", "wait_mlflow_server", "wait_ray_head",
]  # fmt: skip
