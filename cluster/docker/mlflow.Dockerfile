# The MLflow tracking server image (cluster/k8s/mlflow.yaml): basic-auth app, PostgreSQL driver, S3 client.
#
#   docker build -f cluster/docker/mlflow.Dockerfile --build-arg PYTHON_BASE_DIGEST=@sha256:<digest> \
#     -t your-registry.example.com/vlsa-mlflow:3.17.2 .
ARG PYTHON_BASE_DIGEST=""
FROM python:3.11-slim${PYTHON_BASE_DIGEST}

RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "boto3==1.44.5" "psycopg2-binary==2.9.13" \
    && useradd --uid 1000 --create-home mlflow
USER 1000
ENTRYPOINT ["mlflow"]
