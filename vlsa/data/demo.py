"""The embedded demo dataset: procedurally drawn shapes, in the LLaVA formats.

Each image (random size and aspect ratio) shows 1-4 shapes of one colour and one kind on a grey
background. Questions ask for the colour, the shape, the count, or (single shapes only) the
position, each answered with one short word. Answers are balanced per question type, so the best
image-blind policy (the most frequent answer of each question type) scores about
one in four (``vlsa.eval.demo.blind_baseline``), while a model that sees the image can score far higher.

``generate_demo`` writes::

    images/train/*.png|jpg, images/eval/*.png|jpg
    pretrain.json   LLaVA-558K format: one caption conversation per training image
    instruct.json   LLaVA-665K format: 2-3 question/answer turns per training image
    eval.jsonl      LLaVA question format ({"question_id", "image", "text", "category"}) plus "answer"
    manifest.json   what was generated (a second call with the same settings reuses the files)

Answers to the held-out split are scored by the ``demo`` benchmark (``vlsa.eval.scorers.demo``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlsa.config import DataConfig, DemoConfig, EvalConfig
from vlsa.tokens import IMAGE_TOKEN

COLORS = {"red": (215, 45, 45), "green": (40, 170, 60), "blue": (45, 85, 215), "yellow": (230, 205, 35)}
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("one", "two", "three", "four")
POSITIONS = ("left", "right", "top", "bottom")
ANSWERS = {"color": tuple(COLORS), "shape": SHAPES, "count": COUNTS, "position": POSITIONS}
QUESTIONS = {
    "color": ("What color are the shapes in the image?", "Which color do the shapes have?"),
    "shape": ("What kind of shape is shown in the image?", "Which shape is drawn in the image?"),
    "count": ("How many shapes are there in the image?", "How many shapes can you count?"),
    "position": ("Where in the image is the shape?", "On which side of the image is the shape?"),
}
SHORT = "Answer the question using a single word or phrase."
CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short caption of the image.", "What does the image show?")
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
POSITION_SHARE = 0.75
"""Share of the single shapes of the training split asked for their position instead of their count."""
# single shapes are as much likelier as keeps the count answers balanced: 1 / (1 - POSITION_SHARE) times
_COUNT_WEIGHTS = np.array([1 / (1 - POSITION_SHARE), 1, 1, 1]) / (3 + 1 / (1 - POSITION_SHARE))
SINGLE_RADIUS = (0.2, 0.25)
"""Radius of a single shape, as a fraction of the image's shorter side (drawn uniformly)."""
MULTI_RADIUS = (0.38, 0.44)
"""Radius of each of several shapes, as a fraction of half the shorter side (one shape per quadrant)."""
MULTI_JITTER = 0.03
"""Largest offset of a shape from its quadrant's centre, as a fraction of the image side."""
BACKGROUND = (128, 129)
"""Grey levels of the background (drawn uniformly, upper end excluded)."""
DRAWING = 3
"""Version of how scenes are drawn: a change redraws generated sets in place (and their labels are remade)."""


@dataclass(frozen=True)
class Scene:
    """What one demo image shows."""

    width: int
    height: int
    color: str
    shape: str
    count: int
    position: str  # "" when count > 1
    background: int
    third: str
    """The third question type: ``count``, or for half of the single shapes ``position``."""

    def answer(self, kind: str) -> str:
        values = {"color": self.color, "shape": self.shape, "count": COUNTS[self.count - 1], "position": self.position}
        return values[kind]

    def question_kinds(self) -> list[str]:
        """The question types asked about this scene (answers balanced over the dataset)."""
        return ["color", "shape", self.third]


# ------------------------------------------------------------------------------------------ scenes


def random_scene(rng: np.random.Generator, cfg: DemoConfig) -> Scene:
    """A scene with independent uniform attributes (counts weighted, see ``_COUNT_WEIGHTS``)."""
    count = int(rng.choice(4, p=_COUNT_WEIGHTS)) + 1
    third = "position" if count == 1 and rng.random() < POSITION_SHARE else "count"
    return Scene(
        width=int(rng.integers(cfg.min_side, cfg.max_side + 1)),
        height=int(rng.integers(cfg.min_side, cfg.max_side + 1)),
        color=str(rng.choice(list(COLORS))),
        shape=str(rng.choice(SHAPES)),
        count=count,
        position=str(rng.choice(POSITIONS)) if count == 1 else "",
        background=int(rng.integers(*BACKGROUND)),
        third=third,
    )


def balanced_scenes(rng: np.random.Generator, cfg: DemoConfig, n: int) -> list[Scene]:
    """``n`` scenes whose colours, shapes, counts and positions cycle evenly (the held-out split)."""
    colors, shapes = _cycle(list(COLORS), n, rng), _cycle(list(SHAPES), n, rng)
    counts = _cycle([1, 1, 2, 3, 4], n, rng)
    singles = [i for i in range(n) if counts[i] == 1]
    asked = set(singles[1::2])  # every other single shape is asked for its position
    positions = iter(_cycle(list(POSITIONS), len(asked), rng))
    return [
        Scene(
            width=int(rng.integers(cfg.min_side, cfg.max_side + 1)),
            height=int(rng.integers(cfg.min_side, cfg.max_side + 1)),
            color=colors[i], shape=shapes[i], count=counts[i],
            position=(next(positions) if i in asked else str(rng.choice(POSITIONS))) if counts[i] == 1 else "",
            background=int(rng.integers(*BACKGROUND)),
            third="position" if i in asked else "count",
        )
        for i in range(n)
    ]


def _cycle(values: list, n: int, rng: np.random.Generator) -> list:
    out = (values * (n // len(values) + 1))[:n]
    return [out[i] for i in rng.permutation(n)]


def draw_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Render a scene: shapes in the half named by ``position``, or spread over the quadrants."""
    image = Image.new("RGB", (scene.width, scene.height), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    for cx, cy, r in _placements(scene, rng):
        _draw_shape(draw, scene.shape, cx, cy, r, COLORS[scene.color])
    return image


def _placements(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    w, h = scene.width, scene.height
    if scene.count == 1:
        fx, fy = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}[scene.position]
        r = min(w, h) * rng.uniform(*SINGLE_RADIUS)
        jitter = min(w, h) * 0.04
        return [(fx * w + rng.uniform(-jitter, jitter), fy * h + rng.uniform(-jitter, jitter), r)]
    cells = rng.permutation(4)[: scene.count]
    r = min(w, h) / 2 * rng.uniform(*MULTI_RADIUS)
    out = []
    for cell in cells:
        x0, y0 = (cell % 2) * w / 2, (cell // 2) * h / 2
        jx, jy = rng.uniform(-MULTI_JITTER, MULTI_JITTER, size=2)
        out.append((x0 + w / 4 + jx * w, y0 + h / 4 + jy * h, r))
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=color)
    else:
        t = r * 0.32
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=color)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=color)


# ------------------------------------------------------------------------------------------- text


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A one-sentence caption naming count, colour, shape and (single shapes) position."""
    noun = scene.shape if scene.count == 1 else _PLURAL[scene.shape]
    where = {"left": " on the left", "right": " on the right", "top": " at the top", "bottom": " at the bottom"}.get(
        scene.position, ""
    )
    forms = (
        f"{COUNTS[scene.count - 1].capitalize()} {scene.color} {noun}{where} on a gray background.",
        f"The image shows {COUNTS[scene.count - 1]} {scene.color} {noun}{where}.",
    )
    return forms[int(rng.integers(len(forms)))]


def conversation(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """LLaVA-665K style turns: the image placeholder before or after the first question."""
    kinds = [scene.question_kinds()[i] for i in rng.permutation(3)]
    turns = []
    for i, kind in enumerate(kinds):
        question = f"{QUESTIONS[kind][int(rng.integers(2))]}\n{SHORT}"
        if i == 0:
            question = f"{IMAGE_TOKEN}\n{question}" if rng.random() < 0.5 else f"{question}\n{IMAGE_TOKEN}"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": scene.answer(kind)}]
    return turns


# -------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class DemoPaths:
    """Where ``generate_demo`` put the dataset."""

    root: str
    image_root: str
    pretrain: str
    instruct: str
    eval: str

    def train_file(self, template: str) -> str:
        """Captions for the ``plain`` template (Stage I), conversations otherwise."""
        return self.pretrain if template == "plain" else self.instruct


def generate_demo(cfg: DemoConfig, out_dir: str | Path, seed: int = 0) -> DemoPaths:
    """Write the demo dataset under ``out_dir`` (reused when already generated with the same settings)."""
    out = Path(out_dir).expanduser()
    paths = DemoPaths(str(out), str(out / "images"), str(out / "pretrain.json"), str(out / "instruct.json"),
                      str(out / "eval.jsonl"))
    spec = {"config": drawing_spec(cfg), "seed": seed, "version": DRAWING}
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == spec:
        return paths
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    train = [random_scene(rng, cfg) for _ in range(cfg.train_images)]
    pretrain, instruct = _write_train(train, out, rng)
    questions = _write_eval(balanced_scenes(rng, cfg, cfg.eval_images), out, rng)
    _write_json(Path(paths.pretrain), pretrain)
    _write_json(Path(paths.instruct), instruct)
    Path(paths.eval).write_text("".join(json.dumps(q) + "\n" for q in questions))
    counts = {"train_images": len(train), "pretrain": len(pretrain), "instruct": len(instruct), "eval": len(questions)}
    _write_json(manifest, {"spec": spec, "counts": counts})
    return paths


def drawing_spec(cfg: DemoConfig) -> dict:
    """The settings the drawn data set depends on (the tower pretraining settings are not among them)."""
    return {k: v for k, v in asdict(cfg).items() if k != "tower"}


def resolve_data(data: DataConfig, demo: DemoConfig, out_dir: str | Path, seed: int = 0) -> DataConfig:
    """``data`` itself when it names a training file; else a copy pointing at the demo set (made on first use)."""
    if data.train:
        return data
    paths = generate_demo(demo, out_dir, seed)
    return dataclasses.replace(data, train=paths.train_file(data.template), image_root=paths.image_root)


def resolve_eval(cfg: EvalConfig, demo: DemoConfig, out_dir: str | Path, seed: int = 0) -> EvalConfig:
    """``cfg`` itself when it names a question file; else a copy pointing at the demo held-out split."""
    if cfg.data:
        return cfg
    paths = generate_demo(demo, out_dir, seed)
    return dataclasses.replace(cfg, data=paths.eval, image_root=paths.image_root)


def _save(image: Image.Image, out: Path, rel: str) -> None:
    path = out / "images" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if rel.endswith(".jpg"):
        image.save(path, "JPEG", quality=95)
    else:
        image.save(path, "PNG")


def _write_train(scenes: list[Scene], out: Path, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    pretrain, instruct = [], []
    for i, scene in enumerate(scenes):
        rel = f"train/{i:05d}.{'jpg' if i % 5 == 4 else 'png'}"  # some JPEGs exercise that decoder too
        _save(draw_scene(scene, rng), out, rel)
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        pretrain.append({"id": f"cap-{i:05d}", "image": rel, "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}, {"from": "gpt", "value": caption(scene, rng)}]})
        instruct.append({"id": f"qa-{i:05d}", "image": rel, "conversations": conversation(scene, rng)})
    return pretrain, instruct


def _write_eval(scenes: list[Scene], out: Path, rng: np.random.Generator) -> list[dict]:
    questions = []
    for i, scene in enumerate(scenes):
        rel = f"eval/{i:05d}.{'jpg' if i % 5 == 4 else 'png'}"
        _save(draw_scene(scene, rng), out, rel)
        for kind in scene.question_kinds():
            text = f"{QUESTIONS[kind][int(rng.integers(2))]}\n{SHORT}"
            questions.append({"question_id": f"{i:05d}-{kind}", "image": rel, "text": text, "category": kind,
                              "answer": scene.answer(kind)})
    return questions


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# -------------------------------------------------------------------------------------- evaluation


def load_eval(path: str) -> list[dict]:
    """The held-out questions (LLaVA question format plus ``answer``)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def question_kind(text: str) -> str | None:
    """The question type of a demo question (placeholder and answer-format hint ignored)."""
    first = text.replace(IMAGE_TOKEN, "").replace(SHORT, "").strip()
    return next((kind for kind, forms in QUESTIONS.items() if first in forms), None)
