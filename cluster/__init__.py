"""Deployment: the Ray cluster launcher and KubeRay configs, the MLflow server, and the local dev stack."""
