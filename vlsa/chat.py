"""Ask a model about an image from the command line.

    python -m vlsa.chat --model DIR --image F --prompt "What is in the image?"
    python -m vlsa.chat --model DIR --image F          # interactive: one question a line, empty line or EOF quits

``--model`` is an exported inference folder or a stage-end training checkpoint (then ``--config``
names the run's config). Answers are greedy (temperature 0). The conversation is kept across turns,
as LLaVA's CLI does; with no ``--prompt`` and a non-interactive stdin every line of stdin is one
turn and each answer is printed on its own line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Iterator, TextIO

from vlsa.config import load_config
from vlsa.eval.infer import Answerer, load_model, model_id_of, user_text
from vlsa.io import storage
from vlsa.io.image import ImageRejected, decode_image
from vlsa.io.records import ASSISTANT, Turn, USER


class Chat:
    """One conversation about one image: ``ask(question) -> answer``, history kept."""

    def __init__(self, answerer, image) -> None:
        self.answerer, self.image = answerer, image
        self.turns: list[Turn] = []

    def ask(self, question: str) -> str:
        """The greedy answer to ``question`` given the conversation so far."""
        first = not self.turns
        text = user_text(question, has_image=True) if first else question
        turns = [*self.turns, Turn(USER, text)]
        (answer,) = self.answerer.answer([turns], [[self.image]])
        self.turns = [*turns, Turn(ASSISTANT, answer)]
        return answer


def questions(stream: TextIO, interactive: bool) -> Iterator[str]:
    """Questions from ``stream``: a prompt before each when interactive; stops at EOF or an empty line."""
    while True:
        if interactive:
            print("USER: ", end="", flush=True)
        line = stream.readline()
        if not line or (interactive and not line.strip()):
            return
        if line.strip():
            yield line.strip()


def run(chat: Chat, asked: Iterable[str], out: TextIO, interactive: bool) -> int:
    """Answer each question; returns how many were answered."""
    count = 0
    for question in asked:
        answer = chat.ask(question)
        print(f"ASSISTANT: {answer}" if interactive else answer, file=out, flush=True)
        count += 1
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlsa.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported model folder or training checkpoint (local or s3://)")
    parser.add_argument("--image", required=True, help="image file (local or s3://)")
    parser.add_argument("--prompt", default=None, help="one question; without it, questions come from stdin")
    parser.add_argument("--config", default="tiny", help="a checkpoint's run config (default: tiny)")
    parser.add_argument("--template", default="", help="chat template (default: the config's eval.template)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="answer budget (default: eval.max_new_tokens)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.cache_dir=DIR")
    return parser


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Command-line entry; exit 2 with a message when the image cannot be read."""
    args = _parser().parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    cfg = load_config(args.config, args.overrides)
    try:
        image = decode_image(storage.read_bytes(args.image, max_bytes=cfg.label.decode.max_bytes), cfg.label.decode)
    except (OSError, ImageRejected, storage.ReadRefused) as err:
        print(f"error: image {args.image}: {err}", file=sys.stderr)
        return 2
    answerer = Answerer(load_model(args.model, cfg), template=args.template or cfg.eval.template,
                        max_new_tokens=args.max_new_tokens or cfg.eval.max_new_tokens, model_id=model_id_of(args.model))
    chat = Chat(answerer, image)
    if args.prompt is not None:
        run(chat, [args.prompt], stdout, interactive=False)
        return 0
    interactive = stdin.isatty()
    run(chat, questions(stdin, interactive), stdout, interactive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
