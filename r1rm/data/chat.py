"""From a canonical record to the chat messages a judge sees, in either order."""

from __future__ import annotations

import os

from r1rm.core.prompts import caption_question, generation_message, msrl_text, r1reward_text, user_message
from r1rm.data.media import resolve_path, resolve_video
from r1rm.data.records import Record

ORDERS = ("chosen_first", "chosen_second")


def oriented(rec: Record, order: str) -> Record:
    """The record with the chosen response shown first or second (label follows)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    want = 1 if order == "chosen_first" else 2
    return rec if rec.label == want else rec.swapped()


def record_messages(
    rec: Record,
    *,
    prompt: str = "r1reward",
    image_root: str | os.PathLike,
    video_max_frames: int = 8,
    write_caption: bool = False,
    max_pixels: int | None = None,
) -> list[dict]:
    """User turn for judging `rec` as it is ordered (use `oriented` first to pick an order).

    Image paths are resolved under image_root (absolute paths in the messages). In caption
    modality the caption replaces the image; in text modality there is no visual part.
    Visual responses (generation pairs) are shown in order after the generation prompt; with
    `max_pixels` the sample's pixel budget is split evenly over its visuals (each image part
    carries its share as "max_pixels", applied by `fit_visuals` before the processor).
    """
    if rec.response1.kind != "text":
        return _generation_messages(rec, prompt=prompt, image_root=image_root, video_max_frames=video_max_frames,
                                    write_caption=write_caption, max_pixels=max_pixels)
    a1, a2 = rec.response1.text or "", rec.response2.text or ""
    images: list[str] = []
    video: list[str] | None = None
    caption = None
    if rec.modality == "image":
        images = [str(resolve_path(p, image_root)) for p in rec.images]
    elif rec.modality == "video":
        video = [str(p) for p in resolve_video(rec.video, image_root, video_max_frames)]
    elif rec.modality == "caption":
        caption = rec.caption
    if write_caption and rec.modality in ("image", "video") and prompt != "msrl":
        raise ValueError("write_caption needs the msrl prompt")
    if prompt == "r1reward":
        question = caption_question(rec.question, caption) if caption is not None else rec.question
        text = r1reward_text(question, a1, a2)
    elif prompt == "msrl":
        text = msrl_text(rec.question, a1, a2, caption=caption, write_caption=write_caption)
    else:
        raise ValueError(f"unknown prompt {prompt!r}")
    return user_message(text, images=images, video=video)


def _generation_messages(rec: Record, *, prompt: str, image_root, video_max_frames: int, write_caption: bool,
                         max_pixels: int | None) -> list[dict]:
    kind = rec.response1.kind  # both of one kind: parse_record refuses mixed responses
    if kind == "image":
        visuals = [str(resolve_path(r.visual, image_root)) for r in (rec.response1, rec.response2)]
    else:
        visuals = [[str(p) for p in resolve_video(r.visual, image_root, video_max_frames)]
                   for r in (rec.response1, rec.response2)]
    context = [str(resolve_path(p, image_root)) for p in rec.images] if rec.modality == "image" else []
    msgs = generation_message(rec.question, kind, visuals[0], visuals[1], prompt=prompt, write_caption=write_caption,
                              context_images=context)
    if max_pixels is not None:
        share = max(max_pixels // (len(context) + 2), 1)
        for part in msgs[0]["content"]:
            if part["type"] in ("image", "video"):
                part["max_pixels"] = share
    return msgs

