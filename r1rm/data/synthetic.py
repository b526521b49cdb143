"""The synthetic preference task: r1rm's embedded default data.

Each example is a tiny scene of big, flat-coloured shapes (circle, square, triangle in
red, green, blue, yellow or purple) on a white background, a question about it, and two
short candidate answers: one states the true fact, the other a plausible wrong fact of
the same kind. The judge must say which response is right. The task is learnable by a
~1M-parameter randomly initialised Qwen2.5-VL-shaped model trained on CPU: at the
default 112x112 pixels an image is 16 vision tokens and every shape covers several of
them.

Difficulty levels (one question kind each):

    1 colour             one shape;  "What colour is the shape?"      -> "The shape is red."
    2 shape              one shape;  "What kind of shape is it?"      -> "The shape is a circle."
    3 count              1-4 identical shapes; "How many circles are there?" -> "There are three circles."
    4 position           two shapes of different colours side by side;
                         "Which side is the red shape on?"            -> "The red shape is on the left."
    5 attribute_binding  two shapes of different kinds and colours;
                         "What colour is the circle?"                 -> "The circle is red."
                         (the wrong answer is the other shape's colour)
    6 generation         MSRL's image-generation pairs: the *responses are images*.
                         "Generate an image of a red circle." -> two rendered candidates,
                         one matching, one with the same shape in another colour.

Level 6 in the image modality writes two images per pair (responses {"image": ...},
task type image_generation); in the caption and text modalities each candidate is
described instead ("Image A: A red circle."), as MSRL's caption stage does.

Three modalities present the SAME facts (same seed and n give the same scenes,
questions, responses and labels; only the context differs):

    image    the scene is a PNG (record `images`); the record also carries the exact
             caption (for caption distillation); the prompt shows the image
    caption  no image; `caption` is an exact description ("A red circle.")
    text     no visual context; the question starts with the scene
             ("Scene: a red circle.\\nWhat colour is the shape?")

Labels are balanced exactly (counts of 1 and 2 differ by at most one, overall and per
level). Every record carries a teacher trace in meta["trace"]
("<think>Response 1 says ... So Response 2 is correct.</think><answer>2</answer>") and
the scene facts in meta["facts"].

A simulated imperfect teacher (R1-Reward's cold start uses GPT-4o's traces, which are not
always right): with teacher_error > 0, an example in the teacher's blind spot (its scene
has a colour or shape kind listed in teacher_blind; every example when the list is empty)
gets, with probability teacher_error (drawn from its uid), a *mistaken* trace: the teacher
sees what the wrong response says ("The image shows a blue square" for a purple one) and
concludes it. Labels stay true, so RL's reward is right where the teacher was wrong;
meta["teacher_correct"] records which traces are mistaken. teacher_mistake="position" makes it a
position-biased judge instead: only where the label is 2, it reasons correctly and names Response 1. Generation is pure and deterministic
(random.Random(seed), no global RNG): the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from r1rm.data.files import atomic_path, write_jsonl_atomic
from r1rm.errors import ConfigError

GENERATOR = "r1rm.synthetic/v1"

LEVELS: dict[int, str] = {
    1: "colour",
    2: "shape",
    3: "count",
    4: "position",
    5: "attribute_binding",
    6: "generation",
}
GENERATION = 6
# how the simulated imperfect teacher errs (Example.teacher_mistake; mistaken_trace)
TEACHER_MISTAKES = ("perception", "position")

MODALITIES = ("image", "caption", "text")

# well-separated flat colours (RGB)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
MIN_IMAGE_SIZE = 32

_QUESTION = {
    1: "What colour is the shape?",
    2: "What kind of shape is it?",
    3: "How many {kind}s are there?",
    4: "Which side is the {colour} shape on?",
    5: "What colour is the {kind}?",
    6: "Generate an image of a {colour} {kind}.",
}


@dataclass(frozen=True)
class Shape:
    """One shape; geometry is normalised to [0, 1] (centre x, y and side of its square box)."""

    kind: str
    colour: str
    x: float
    y: float
    size: float

    def to_json(self) -> dict:
        return {"shape": self.kind, "colour": self.colour, "x": self.x, "y": self.y, "size": self.size}


@dataclass(frozen=True)
class Scene:
    """What an image shows: shapes on a flat background (independent of the pixel size)."""

    shapes: tuple[Shape, ...]
    background: tuple[int, int, int] = BACKGROUND

    def describe(self) -> str:
        """Exact lower-case description: "a red circle", "three red circles",
        "a blue square on the left and a green circle on the right"."""
        first = self.shapes[0]
        if all(s.kind == first.kind and s.colour == first.colour for s in self.shapes):
            n = len(self.shapes)
            if n == 1:
                return f"a {first.colour} {first.kind}"
            return f"{COUNT_WORDS[n]} {first.colour} {first.kind}s"
        left, right = sorted(self.shapes, key=lambda s: s.x)
        return f"a {left.colour} {left.kind} on the left and a {right.colour} {right.kind} on the right"

    @property
    def plural(self) -> bool:
        return len(self.shapes) > 1 and len({(s.kind, s.colour) for s in self.shapes}) == 1


@dataclass(frozen=True)
class Example:
    """One synthetic preference pair. `question` is the bare question (the same in every
    modality); `prompt_question` is what the record's `question` field holds."""

    index: int
    uid: str
    level: int
    modality: str
    scene: Scene
    question: str
    correct: str
    wrong: str
    label: int
    facts: dict = field(compare=True, hash=False)
    teacher_error: float = 0.0
    teacher_blind: tuple[str, ...] = ()
    teacher_mistake: str = "perception"

    @property
    def category(self) -> str:
        return LEVELS[self.level]

    @property
    def response1(self) -> str:
        return self.correct if self.label == 1 else self.wrong

    @property
    def response2(self) -> str:
        return self.wrong if self.label == 1 else self.correct

    @property
    def candidates(self) -> tuple[Scene, Scene] | None:
        """Generation level: the scenes of response 1 and response 2 (else None)."""
        if self.level != GENERATION:
            return None
        right, wrong = (Scene((Shape(**_shape_args(d)),)) for d in (self.facts["candidate_correct"],
                                                                     self.facts["candidate_wrong"]))
        return (right, wrong) if self.label == 1 else (wrong, right)

    def candidate_paths(self) -> tuple[str, str]:
        """Generation level, image modality: the two response images (relative paths)."""
        return f"images/{self.uid}_1.png", f"images/{self.uid}_2.png"

    @property
    def caption(self) -> str:
        return _cap(self.scene.describe()) + "."

    @property
    def prompt_question(self) -> str:
        if self.modality == "text":
            return f"Scene: {self.scene.describe()}.\n{self.question}"
        return self.question

    @property
    def image_path(self) -> str | None:
        """The context image path relative to the dataset folder (image modality, levels 1-5)."""
        return f"images/{self.uid}.png" if self.modality == "image" and self.level != GENERATION else None

    @property
    def trace(self) -> str:
        """The simulated teacher's trace: the correct one unless the teacher errs here."""
        return teacher_trace(self, self.label) if self.teacher_correct else mistaken_trace(self, kind=self.teacher_mistake)

    @property
    def teacher_correct(self) -> bool:
        """Whether the simulated teacher gets this example right (always, when teacher_error is 0)."""
        if self.teacher_error <= 0:
            return True
        if self.teacher_mistake == "position" and self.label == 1:  # it errs only by preferring the first
            return True
        blind = set(self.teacher_blind)
        if blind and not any({s.colour, s.kind} & blind for s in self.scene.shapes):
            return True
        return random.Random(f"{self.uid}/teacher").random() >= self.teacher_error

    def _meta(self) -> dict:
        meta = {"trace": self.trace, "facts": self.facts}
        if self.teacher_error > 0:
            meta["teacher_correct"] = self.teacher_correct
        return meta

    def to_record(self, prefix: str = "synthetic") -> dict:
        """The canonical record dict (accepted by `parse_record`)."""
        if self.level == GENERATION:
            return self._generation_record(prefix)
        return {
            "uid": self.uid,
            "id": f"{prefix}-{self.index}",
            "source": "synthetic",
            "question": self.prompt_question,
            "modality": self.modality,
            "images": [self.image_path] if self.modality == "image" else [],
            "video": [],
            "caption": self.caption if self.modality in ("image", "caption") else None,
            "response1": self.response1,
            "response2": self.response2,
            "label": self.label,
            "category": self.category,
            "task_type": "text" if self.modality == "text" else "image_understanding",
            "difficulty": self.level,
            "meta": self._meta(),
        }

    def _generation_record(self, prefix: str) -> dict:
        if self.modality == "image":
            p1, p2 = self.candidate_paths()
            responses: tuple = ({"image": p1}, {"image": p2})
        else:  # each candidate described, as MSRL's caption stage does
            responses = (f"Image A: {self.response1}", f"Image B: {self.response2}")
        return {
            "uid": self.uid,
            "id": f"{prefix}-{self.index}",
            "source": "synthetic",
            "question": self.question,
            "modality": "text",
            "images": [],
            "video": [],
            "caption": None,
            "response1": responses[0],
            "response2": responses[1],
            "label": self.label,
            "category": self.category,
            "task_type": "image_generation",
            "difficulty": self.level,
            "meta": self._meta(),
        }

    def to_json(self) -> dict:
        return self.to_record()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _r(v: float) -> float:
    return round(v, 4)


# ---------------------------------------------------------------------------- scenes


def _place(rng: random.Random, size: float, x0: float, x1: float, y0: float, y1: float, margin: float) -> tuple[float, float]:
    """A centre for a box of side `size` inside [x0, x1] x [y0, y1] keeping `margin` free."""
    lo_x, hi_x = x0 + size / 2 + margin, x1 - size / 2 - margin
    lo_y, hi_y = y0 + size / 2 + margin, y1 - size / 2 - margin
    return _r(rng.uniform(lo_x, max(lo_x, hi_x))), _r(rng.uniform(lo_y, max(lo_y, hi_y)))


def _single(rng: random.Random, kind: str, colour: str) -> Scene:
    size = _r(rng.uniform(0.45, 0.62))  # >= 1/3 of the image width
    x, y = _place(rng, size, 0.0, 1.0, 0.0, 1.0, 0.04)
    return Scene((Shape(kind, colour, x, y, size),))


def _side_by_side(rng: random.Random, left: tuple[str, str], right: tuple[str, str]) -> Scene:
    shapes = []
    for (kind, colour), (x0, x1) in ((left, (0.0, 0.5)), (right, (0.5, 1.0))):
        size = _r(rng.uniform(0.32, 0.42))
        x, y = _place(rng, size, x0, x1, 0.0, 1.0, 0.03)
        shapes.append(Shape(kind, colour, x, y, size))
    return Scene(tuple(shapes))


def _shape_args(d: dict) -> dict:
    return {"kind": d["shape"], "colour": d["colour"], "x": d["x"], "y": d["y"], "size": d["size"]}


def _claim(level: int, asked: dict, value: Any) -> str:
    """The lower-case statement of `value` as an answer to the level's question."""
    if level == 1:
        return f"the shape is {value}"
    if level == 2:
        return f"the shape is a {value}"
    if level == 3:
        kind = asked["shape"]
        return f"there is one {kind}" if value == 1 else f"there are {COUNT_WORDS[value]} {kind}s"
    if level == 4:
        return f"the {asked['colour']} shape is on the {value}"
    if level == GENERATION:
        return f"a {value} {asked['shape']}"
    return f"the {asked['shape']} is {value}"


def _sample(rng: random.Random, level: int) -> tuple[Scene, dict, Any, Any]:
    """Scene, what is asked, the correct value and a plausible wrong value of the same kind."""
    colours = list(COLOURS)
    if level == 1:
        colour, kind = rng.choice(colours), rng.choice(SHAPES)
        scene = _single(rng, kind, colour)
        wrong = rng.choice([c for c in colours if c != colour])
        return scene, {"attribute": "colour"}, colour, wrong
    if level == 2:
        colour, kind = rng.choice(colours), rng.choice(SHAPES)
        scene = _single(rng, kind, colour)
        wrong = rng.choice([k for k in SHAPES if k != kind])
        return scene, {"attribute": "shape"}, kind, wrong
    if level == 3:
        colour, kind = rng.choice(colours), rng.choice(SHAPES)
        count = rng.randint(1, 4)
        cells = sorted(rng.sample(range(4), count))  # 2x2 grid, one shape per cell
        shapes = []
        for c in cells:
            x0, y0 = (c % 2) * 0.5, (c // 2) * 0.5
            size = _r(rng.uniform(0.30, 0.38))
            x, y = _place(rng, size, x0, x0 + 0.5, y0, y0 + 0.5, 0.025)
            shapes.append(Shape(kind, colour, x, y, size))
        wrong = rng.choice([k for k in COUNT_WORDS if k != count])
        return Scene(tuple(shapes)), {"attribute": "count", "shape": kind}, count, wrong
    if level == 4:
        c_left, c_right = rng.sample(colours, 2)
        k_left, k_right = rng.choice(SHAPES), rng.choice(SHAPES)
        scene = _side_by_side(rng, (k_left, c_left), (k_right, c_right))
        side = rng.choice(("left", "right"))
        target = c_left if side == "left" else c_right
        wrong = "right" if side == "left" else "left"
        return scene, {"attribute": "side", "colour": target}, side, wrong
    if level == 5:
        c_left, c_right = rng.sample(colours, 2)
        k_left, k_right = rng.sample(SHAPES, 2)
        scene = _side_by_side(rng, (k_left, c_left), (k_right, c_right))
        asked_left = rng.random() < 0.5
        kind, colour, other = (k_left, c_left, c_right) if asked_left else (k_right, c_right, c_left)
        return scene, {"attribute": "colour", "shape": kind}, colour, other
    if level == GENERATION:
        colour, kind = rng.choice(colours), rng.choice(SHAPES)
        wrong = rng.choice([c for c in colours if c != colour])
        right_scene = _single(rng, kind, colour)
        wrong_scene = _single(rng, kind, wrong)
        return right_scene, {"attribute": "generation", "shape": kind, "colour": colour,
                             "candidates": (wrong_scene.shapes[0].to_json(),)}, colour, wrong
    raise ConfigError(f"unknown synthetic level {level!r}", fix=f"use levels from {sorted(LEVELS)}")


def _check_args(n: int, seed: int, levels: Sequence[int], modality: str, image_size: int) -> tuple[int, ...]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"synthetic n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"synthetic seed must be an integer, got {seed!r}")
    if isinstance(levels, int | str):
        levels = (levels,)  # type: ignore[assignment]
    levels = tuple(levels)
    if not levels:
        raise ConfigError("synthetic levels is empty", fix=f"give one or more of {sorted(LEVELS)}")
    bad = [lv for lv in levels if isinstance(lv, bool) or lv not in LEVELS]
    if bad:
        names = ", ".join(f"{k}={v}" for k, v in LEVELS.items())
        raise ConfigError(f"unknown synthetic level {bad[0]!r}", fix=f"use levels among {names}")
    if modality not in MODALITIES:
        raise ConfigError(f"synthetic modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"synthetic image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return levels


def _check_teacher(error: float, blind: Sequence[str], mistake: str = "perception") -> tuple[str, ...]:
    if isinstance(error, bool) or not isinstance(error, int | float) or not 0 <= error <= 1:
        raise ConfigError(f"synthetic teacher_error must be a number in [0, 1], got {error!r}")
    if mistake not in TEACHER_MISTAKES:
        raise ConfigError(f"unknown synthetic teacher_mistake {mistake!r}", fix=f"use one of {', '.join(TEACHER_MISTAKES)}")
    if isinstance(blind, str):
        blind = (blind,)
    known = (*COLOURS, *SHAPES)
    bad = [b for b in blind if b not in known]
    if bad:
        raise ConfigError(f"unknown synthetic teacher_blind entry {bad[0]!r}", fix=f"use colours or shape kinds among {', '.join(known)}")
    return tuple(blind)


def make_examples(
    n: int,
    *,
    seed: int,
    levels: Sequence[int] = (1,),
    modality: str = "image",
    image_size: int = 112,
    teacher_error: float = 0.0,
    teacher_blind: Sequence[str] = (),
    teacher_mistake: str = "perception",
) -> list[Example]:
    """`n` examples spread evenly over `levels` (in a seeded order), labels balanced exactly.

    Nothing here depends on `modality`/`image_size` except presentation and uids, so the
    three modalities share scenes, questions, responses and labels.
    """
    levels = _check_args(n, seed, levels, modality, image_size)
    blind = _check_teacher(teacher_error, teacher_blind, teacher_mistake)
    rng = random.Random(seed)
    # plan: levels cycled evenly; labels alternate along the level-grouped order so that
    # both the overall and the per-level label counts differ by at most one; then shuffle
    level_of = sorted(levels[i % len(levels)] for i in range(n))
    start = rng.randrange(2)
    plan = [(lv, 1 + (start + rank) % 2) for rank, lv in enumerate(level_of)]
    rng.shuffle(plan)

    out: list[Example] = []
    for i, (level, label) in enumerate(plan):
        scene, asked, right, wrong = _sample(rng, level)
        candidates = asked.pop("candidates", None)
        question = _QUESTION[level].format(kind=asked.get("shape", ""), colour=asked.get("colour", ""))
        correct = _cap(_claim(level, asked, right)) + "."
        incorrect = _cap(_claim(level, asked, wrong)) + "."
        facts = {
            "level": level,
            "asked": asked,
            "correct": right,
            "wrong": wrong,
            "description": scene.describe(),
            "shapes": [s.to_json() for s in scene.shapes],
        }
        if candidates is not None:  # generation: the scene is the matching candidate
            facts["candidate_correct"] = scene.shapes[0].to_json()
            facts["candidate_wrong"] = candidates[0]
        key = {
            "generator": GENERATOR,
            "seed": seed,
            "levels": list(levels),
            "modality": modality,
            "image_size": image_size if modality == "image" else None,
            "index": i,
            "level": level,
            "question": question,
            "responses": [correct, incorrect],
            "label": label,
            "facts": facts,
        }
        uid = hashlib.sha1(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
        out.append(Example(i, uid, level, modality, scene, question, correct, incorrect, label, facts,
                           float(teacher_error), blind, teacher_mistake))
    return out


# ---------------------------------------------------------------------------- traces


def teacher_trace(example: Example, answer: int) -> str:
    """The full target text "<think>...</think><answer>N</answer>" concluding `answer`.

    With answer == example.label this is the correct teacher trace; another answer gives
    a trace whose observation is true but whose conclusion is wrong (a negative sample).
    """
    if isinstance(answer, bool) or answer not in (1, 2):
        raise ValueError(f"answer must be 1 or 2, got {answer!r}")
    f = example.facts
    return _trace(example, example.scene, f["correct"], answer)


def mistaken_trace(example: Example, kind: str = "perception") -> str:
    """The simulated teacher's mistake.

    perception: it sees the scene as the wrong response describes it (levels 1-5: the asked
        attribute takes the wrong value) and concludes that response; at the generation level
        it misreads the candidates (observation true, conclusion wrong).
    position: it reasons correctly and still names the other response (a position-biased
        judge whose answer contradicts its own reasoning: what R1-Reward's consistency reward
        is for); `Example.teacher_correct` makes it err only where the label is 2.
    """
    wrong_answer = 3 - example.label
    f = example.facts
    if kind not in TEACHER_MISTAKES:
        raise ValueError(f"unknown teacher mistake {kind!r}")
    if example.level == GENERATION or kind == "position":
        return teacher_trace(example, wrong_answer)
    return _trace(example, _as_wrong_says(example), f["wrong"], wrong_answer)


def _as_wrong_says(example: Example) -> Scene:
    """The scene with the asked attribute set to the wrong response's value."""
    shapes, wrong, level = example.scene.shapes, example.facts["wrong"], example.level
    if level == 1:
        return Scene((replace(shapes[0], colour=wrong),))
    if level == 2:
        return Scene((replace(shapes[0], kind=wrong),))
    if level == 3:
        return Scene((shapes[0],) * wrong)
    a, b = shapes
    if level == 4:  # the asked shape on the other side
        return Scene((replace(a, x=b.x), replace(b, x=a.x)))
    return Scene((replace(a, colour=b.colour), replace(b, colour=a.colour)))  # 5: colours bound wrongly


def _trace(example: Example, scene: Scene, value: Any, answer: int) -> str:
    """The trace that sees `scene`, states `value` as the fact and concludes `answer`."""
    f = example.facts
    level, asked = f["level"], f["asked"]
    claims = {1: _claim(level, asked, f["correct"] if example.label == 1 else f["wrong"]),
              2: _claim(level, asked, f["wrong"] if example.label == 1 else f["correct"])}
    if level == GENERATION:
        scenes = example.candidates
        assert scenes is not None
        seen = ("shows" if example.modality == "image" else "is described as")
        think = (
            f"The prompt asks for a {asked['colour']} {asked['shape']}. Response 1 {seen} {scenes[0].describe()}. "
            f"Response 2 {seen} {scenes[1].describe()}. So Response {answer} is correct."
        )
        return f"<think>{think}</think><answer>{answer}</answer>"
    desc = scene.describe()
    if example.modality == "image":
        seen = f"The image shows {desc}."
    elif example.modality == "caption":
        seen = f"The caption says there {'are' if scene.plural else 'is'} {desc}."
    else:
        seen = f"The scene is {desc}."
    fact = _cap(_claim(level, asked, value)) + "."
    think = (
        f"Response 1 says {claims[1]}. Response 2 says {claims[2]}. {seen} {fact} "
        f"So Response {answer} is correct."
    )
    return f"<think>{think}</think><answer>{answer}</answer>"


# ---------------------------------------------------------------------------- images


def render_image(scene: Scene, size: int) -> Image.Image:
    """Draw `scene` as a size x size RGB image (flat colours, no anti-aliasing)."""
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        half = s.size * size / 2
        cx, cy = s.x * size, s.y * size
        x0, y0 = round(cx - half), round(cy - half)
        x1, y1 = round(cx + half) - 1, round(cy + half) - 1
        rgb = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=rgb)
        elif s.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=rgb)
        elif s.kind == "triangle":  # pointing up; its box centre lies inside it
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=rgb)
        else:
            raise ValueError(f"unknown shape kind {s.kind!r}")
    return img


def _save_png(img: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False, compress_level=6)


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int,
    levels: Sequence[int],
    modality: str,
    image_size: int = 112,
    prefix: str = "synthetic",
    teacher_error: float = 0.0,
    teacher_blind: Sequence[str] = (),
    teacher_mistake: str = "perception",
) -> Path:
    """Write <out_dir>/<prefix>.jsonl (canonical records) and, for the image modality,
    <out_dir>/images/<uid>.png; return the jsonl path. Images are written first, the
    jsonl last and atomically, so an existing jsonl always has its images."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"synthetic n must be a positive integer, got {n!r}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ConfigError(f"synthetic prefix must be a plain file name stem, got {prefix!r}")
    examples = make_examples(n, seed=seed, levels=levels, modality=modality, image_size=image_size,
                             teacher_error=teacher_error, teacher_blind=teacher_blind,
                             teacher_mistake=teacher_mistake)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        (out / "images").mkdir(exist_ok=True)
        for ex in examples:
            if ex.level == GENERATION:
                for scene, rel in zip(ex.candidates or (), ex.candidate_paths(), strict=True):
                    _save_png(render_image(scene, image_size), out / rel)
            else:
                _save_png(render_image(ex.scene, image_size), out / ex.image_path)
    path = out / f"{prefix}.jsonl"
    write_jsonl_atomic(path, (ex.to_record(prefix) for ex in examples))
    return path
