"""``python -m cluster.local start|stop|status|env``: the one-machine dev stack."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cluster.local.processes import http_status
from cluster.local.s3_app import READY_PATH
from cluster.local.stack import client_env, default_state_dir, read_state, services, start_stack, stop_stack


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status", "env"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(), help="databases, logs, state file")
    parser.add_argument("--s3", action="store_true", help="also start a local S3 endpoint (moto) for artifacts")
    parser.add_argument("--no-auth", action="store_true", help="run MLflow without basic-auth (not recommended)")
    parser.add_argument("--num-cpus", type=int, default=6, help="logical CPUs the Ray head advertises")
    return parser


def exports(state: dict) -> str:
    """Shell lines that point the Ray job CLI, MLflow clients and boto3 at the stack (no secret values)."""
    env = client_env(state)
    lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    if "AWS_SHARED_CREDENTIALS_FILE" in env:  # keys in the environment would win over the stack's file
        lines.insert(0, "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE")
    password_file = state["mlflow"]["password_file"]
    if password_file:
        lines.append(f'export MLFLOW_TRACKING_PASSWORD="$(cat {shlex.quote(password_file)})"')
    return "\n".join(lines)


def how_to(state: dict, state_dir: Path) -> str:
    """What to run next, printed after ``start`` and by ``status``."""
    head, mlflow, s3 = services(state)
    where = "" if state_dir.resolve() == default_state_dir().resolve() else f" --state-dir {state_dir}"
    login = f"  (user admin, password in {mlflow.password_file})" if mlflow.password_file else ""
    text = [f"Ray dashboard  {head.dashboard_url}  (token: {head.token_path})", f"MLflow UI      {mlflow.uri}{login}"]
    if s3:
        text.append(f"S3 endpoint    {s3.endpoint}  (bucket s3://vlsa, key in {s3.credentials_file})")
    text += [
        "", "Use it from this shell:", f"  eval \"$(python -m cluster.local env{where})\"",
        "  ray job submit --working-dir . -- python ray_jobs/train.py",
        "Stop it:", f"  python -m cluster.local stop{where}",
    ]  # fmt: skip
    return "\n".join(text)


def _status(state: dict) -> str:
    head, mlflow, s3 = services(state)
    token = Path(head.token_path).read_text().strip() if Path(head.token_path).exists() else ""
    checks = {
        "ray": http_status(f"{head.dashboard_url}/api/version", {"Authorization": f"Bearer {token}"}),
        "mlflow": http_status(f"{mlflow.uri}/health"),
        **({"s3": http_status(f"{s3.endpoint}{READY_PATH}")} if s3 else {}),
    }
    return "\n".join(f"{name:7s}{'up' if code == 200 else 'down'}" for name, code in checks.items())


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is 1 when there is no stack to act on."""
    args = _parser().parse_args(argv)
    state = read_state(args.state_dir)
    if args.command == "start":
        state = start_stack(args.state_dir, s3=args.s3, auth=not args.no_auth, num_cpus=args.num_cpus)
        print(how_to(state, args.state_dir))
        return 0
    if state is None:
        print(f"no stack recorded in {args.state_dir}", file=sys.stderr)
        return 1
    if args.command == "stop":
        stop_stack(args.state_dir)
        print("stopped")
    elif args.command == "env":
        print(exports(state))
    else:
        print(_status(state) + "\n\n" + how_to(state, args.state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
