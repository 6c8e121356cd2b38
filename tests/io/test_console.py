"""The known third-party console noise is hidden precisely (by warning category and module, by logger and
message), every other warning still shows, and Ray runs the same in each worker."""

from __future__ import annotations

import logging
import warnings

from vlsa.ray_session import quiet_runtime_env, quiet_third_party


def shown(category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()  # its filters go in front of "always"
        warnings.warn_explicit("a notice", category, "file.py", 1, module=module)
    return bool(caught)


def test_deprecations_of_torch_distributed_are_hidden_and_other_warnings_kept():
    assert not shown(FutureWarning, "torch.distributed.c10d_logger")
    assert shown(FutureWarning, "vlsa.train.loop")  # our own warnings always show
    assert shown(UserWarning, "torch.distributed.c10d_logger")  # another category from the same module
    assert shown(FutureWarning, "deepspeed.runtime.engine")


def test_known_notices_are_dropped_by_logger_and_message_only():
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger

    def passes(name: str, message: str) -> bool:
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropNotices" for f in logger.filters) == 1
        return bool(logger.filter(logger.makeRecord(name, logging.WARNING, "f.py", 1, message, (), None)))

    assert not passes("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal")
    assert passes("transformers.modeling_utils", "Some weights of the model were not initialized")
    assert not passes("ray.data._internal.progress", "Progress bars disabled. To enable, set ...")


def test_ray_trains_report_lines_are_dropped_from_the_logger_named_after_its_file():
    import ray.train.v2._internal.execution.context as context  # the module whose logger is its file path

    quiet_third_party()
    logger = logging.getLogger(context.__file__)
    record = lambda message: logger.makeRecord(logger.name, logging.INFO, "f.py", 1, message, (), None)  # noqa: E731
    assert not logger.filter(record("Reporting training result 3: TrainingReport(...) from rank 0"))
    assert logger.filter(record("Something else Ray Train says"))


def test_ray_workers_run_the_same_setup():
    env = quiet_runtime_env()
    assert env["worker_process_setup_hook"] == "vlsa.ray_session.quiet_third_party"
    assert env["env_vars"] == {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
