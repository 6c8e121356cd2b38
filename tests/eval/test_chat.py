"""The chat entry: one answer from the command line, and a conversation read from stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlsa.chat import main


def _image(demo) -> str:
    return str(sorted(Path(demo.image_root, "eval").iterdir())[0])


@pytest.mark.integration  # the command end to end, in its own process
def test_chat_command_answers_a_question_about_an_image(exported_model, demo, cache_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vlsa.chat", "--model", exported_model, "--image", _image(demo),
         "--prompt", "What color are the shapes in the image?", "--max-new-tokens", "4",
         f"model.cache_dir={cache_dir}"],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].strip()  # one non-empty decoded answer


def test_chat_reads_a_conversation_from_stdin(exported_model, demo, cache_dir):
    out = io.StringIO()
    stdin = io.StringIO("What color are the shapes?\n\nHow many shapes are there?\n")
    code = main(["--model", exported_model, "--image", _image(demo), "--max-new-tokens", "3",
                 f"model.cache_dir={cache_dir}"], stdin=stdin, stdout=out)
    assert code == 0
    assert len(out.getvalue().splitlines()) == 2  # blank lines are skipped when not interactive


def test_chat_rejects_an_unreadable_image(exported_model, tmp_path, cache_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["--model", exported_model, "--image", str(bad), "--prompt", "hi", f"model.cache_dir={cache_dir}"])
    assert code == 2 and "unsupported_format" in capsys.readouterr().err
