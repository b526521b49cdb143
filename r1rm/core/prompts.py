"""Judge prompts and chat messages. Pure functions of strings and paths.

- `r1reward_text`: the exact prompt the R1-Reward checkpoints were trained on
  (r1rm/resources/r1reward_prompt.txt, byte-identical to the released one).
  The released inference code puts the image(s) first in the user turn, then this text.
- `msrl_text`: the MSRL-style prompt: the judge names the task type in <type>…</type>
  (and, for cross-modal distillation, first writes <caption>…</caption>).

Messages are built in the format `processor.apply_chat_template` takes, so any chat
VLM served by transformers' AutoProcessor works (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL…).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

TASK_TYPE_PHRASES = {
    "image_understanding": "image understanding",
    "image_generation": "image generation",
    "video_understanding": "video understanding",
    "video_generation": "video generation",
    "text": "text",
}
PHRASE_TO_TASK_TYPE = {v: k for k, v in TASK_TYPE_PHRASES.items()}


@lru_cache(maxsize=1)
def r1reward_template() -> str:
    """The byte-exact R1-Reward judge prompt with {question}, {answer1}, {answer2}."""
    return resources.files("r1rm").joinpath("resources/r1reward_prompt.txt").read_text(encoding="utf-8")


def r1reward_text(question: str, answer1: str, answer2: str) -> str:
    """R1-Reward prompt text (METHOD §1). Plain replacement, so braces in the inputs are safe."""
    t = r1reward_template()
    # substitute in one pass so a response that contains "{answer2}" is not expanded
    parts = t.split("{question}")
    assert len(parts) == 2
    head, tail = parts
    a1_head, a1_tail = tail.split("{answer1}")
    a2_head, a2_tail = a1_tail.split("{answer2}")
    return head + question + a1_head + answer1 + a2_head + answer2 + a2_tail


def caption_question(question: str, caption: str) -> str:
    """Question text with the caption standing in for the image (caption modality)."""
    return f"[Image description]: {caption}\n{question}"


_MSRL_HEAD = (
    "You are a highly skilled and impartial evaluator comparing two responses for a multimodal task. "
    "{steps} A tie is not permitted; you must choose a better option."
)
_MSRL_BODY = """

[Question]:
{question}

[Response 1]:
{answer1}

[Response 2]:
{answer2}

Output format (strictly follow): {fmt}"""


def msrl_text(
    question: str,
    answer1: str,
    answer2: str,
    *,
    caption: str | None = None,
    write_caption: bool = False,
) -> str:
    """MSRL judge prompt (METHOD §6): task type in <type>, reasoning in <think>, verdict in <answer>.

    caption: a textual description standing in for the visual context (caption stage).
    write_caption: ask the model to describe the image in <caption>…</caption> first (CMKD).
    """
    steps = []
    fmt = ""
    if write_caption:
        steps.append("First describe the visual content inside <caption> and </caption>.")
        fmt += "<caption>description</caption>"
    types = ", ".join(TASK_TYPE_PHRASES.values())
    steps.append(f"Name the task type inside <type> and </type> (one of: {types}).")
    steps.append("Write a side-by-side comparative analysis inside <think> and </think>.")
    steps.append('Give the better response inside <answer> and </answer>: "1" for Response 1, "2" for Response 2.')
    fmt += "<type>task type</type><think>analysis</think><answer>1/2</answer>"
    body_question = caption_question(question, caption) if caption is not None else question
    return _MSRL_HEAD.format(steps=" ".join(steps)) + _MSRL_BODY.format(
        question=body_question, answer1=answer1, answer2=answer2, fmt=fmt
    )


_GEN_HEAD = (
    "You are a highly skilled and impartial evaluator comparing two {kinds} generated for the same prompt. "
    "Judge which one follows the prompt more faithfully (content, attributes, count, layout) and has the better "
    "visual quality. {steps} A tie is not permitted; you must choose a better option."
)


def generation_parts(question: str, kind: str, *, prompt: str = "r1reward", write_caption: bool = False) -> tuple[str, str, str, str]:
    """The text pieces of a generation-pair prompt (visual responses), in message order:
    (head + generation prompt, label before output A, label before output B, output format).

    Output A is Response 1 and output B is Response 2, so the verdict, the parsers and the
    rewards are the same as for text responses; the two-order evaluation swaps the outputs.
    prompt "msrl" adds the <type> step (and <caption> with write_caption), as `msrl_text`."""
    if kind not in ("image", "video"):
        raise ValueError(f"generation responses are images or videos, got {kind!r}")
    noun = "Image" if kind == "image" else "Video"
    steps, fmt = [], ""
    if prompt == "msrl":
        if write_caption:
            steps.append(f"First describe {noun} A and {noun} B inside <caption> and </caption>.")
            fmt += "<caption>description</caption>"
        types = ", ".join(TASK_TYPE_PHRASES.values())
        steps.append(f"Name the task type inside <type> and </type> (one of: {types}).")
        fmt += "<type>task type</type>"
    elif prompt != "r1reward":
        raise ValueError(f"unknown prompt {prompt!r}")
    steps.append("Write a side-by-side comparative analysis inside <think> and </think>.")
    steps.append(f'Give the better output inside <answer> and </answer>: "1" for {noun} A (Response 1), '
                 f'"2" for {noun} B (Response 2).')
    fmt += "<think>analysis</think><answer>1/2</answer>"
    head = _GEN_HEAD.format(kinds=f"{kind}s", steps=" ".join(steps)) + f"\n\n[Generation prompt]:\n{question}\n"
    return (head, f"\n[Response 1] {noun} A:", f"\n[Response 2] {noun} B:", f"\n\nOutput format (strictly follow): {fmt}")


def generation_message(question: str, kind: str, visual1, visual2, *, prompt: str = "r1reward",
                       write_caption: bool = False, context_images: list | tuple = ()) -> list[dict]:
    """One user turn judging two generated outputs: the prompt first, then output A and output B
    in order (each after its label), then the output format."""
    head, label1, label2, tail = generation_parts(question, kind, prompt=prompt, write_caption=write_caption)
    content: list[dict] = [{"type": "image", "image": img} for img in context_images]
    content.append({"type": "text", "text": head + label1})
    content.append({"type": kind, kind: visual1})
    content.append({"type": "text", "text": label2})
    content.append({"type": kind, kind: visual2})
    content.append({"type": "text", "text": tail})
    return [{"role": "user", "content": content}]


def user_message(text: str, *, images: list | tuple = (), video: list | str | None = None) -> list[dict]:
    """One user turn: the visual parts first (as the released R1-Reward code does), then the text."""
    content: list[dict] = [{"type": "image", "image": img} for img in images]
    if video:
        content.append({"type": "video", "video": video})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def with_assistant(messages: list[dict], target: str) -> list[dict]:
    """Messages plus an assistant turn holding the target text (SFT)."""
    return messages + [{"role": "assistant", "content": [{"type": "text", "text": target}]}]
