"""`r1rm tiny-model`: write a tiny randomly initialised checkpoint of a VLM family, fully offline.

Families (`--family`): qwen2_5_vl (default), qwen2_vl, qwen3_vl, internvl3_5 (transformers-native
InternVL with a Qwen3 text model), llava_onevision (r1rm.models.tiny, r1rm.models.families).

After writing, the checkpoint is loaded back through AutoModelForImageTextToText /
AutoProcessor and asked to judge one synthetic image pair, so a broken build fails here
rather than in a later command. (Its weights are random: the output is noise.)
"""

from __future__ import annotations

from pathlib import Path

from r1rm.errors import ConfigError

# r1rm.models.tiny.FAMILIES, spelled out so that `r1rm --help` imports no torch
FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "internvl3_5", "llava_onevision")


def smoke_generate(path: Path, max_new_tokens: int = 12) -> tuple[int, str]:
    """Load `path`, judge one synthetic image pair; return (prompt tokens, generated text)."""
    import torch

    from r1rm.core.prompts import r1reward_text, user_message
    from r1rm.data.synthetic import make_examples, render_image
    from r1rm.models.loading import load_model, load_processor

    ex = make_examples(1, seed=0, levels=(1,), modality="image")[0]
    processor = load_processor(str(path))
    model = load_model(str(path), device="cpu")  # a local folder just written: no revision, no remote code
    messages = user_message(r1reward_text(ex.question, ex.response1, ex.response2), images=[render_image(ex.scene, 112)])
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    return n_prompt, processor.decode(out[0, n_prompt:], skip_special_tokens=True)


def run(out_dir: Path, *, seed: int = 0, family: str = "qwen2_5_vl", check: bool = True, heads: int = 4,
        width: int = 128, option: str = "--family") -> Path:
    """Build, report and (check) load back the checkpoint; `option` names the flag that gave `family`."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown {option} '{family}'", fix=f"use one of: {', '.join(FAMILIES)}")
    from rich.console import Console
    from rich.markup import escape

    from r1rm.models.tiny import TINY, build_tiny_model, with_heads

    if not 16 <= width <= 4096 or width % 16:
        raise ConfigError(f"--width {width}: the text width must be a multiple of 16 in [16, 4096]", fix="say, --width 256")
    try:
        model_size = with_heads(TINY, heads, width)
    except ValueError as e:
        raise ConfigError(f"--heads {heads} --width {width}: {e}",
                          fix=f"use a head count that leaves head_dim = width / heads of 8 or more (say, --heads {max(1, width // 32)})") from None
    console = Console()
    path = Path(build_tiny_model(out_dir, seed=seed, family=family, size=model_size))
    n_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    console.print(f"tiny {family} checkpoint written to [bold]{escape(str(path))}[/] ({n_bytes / 1e6:.1f} MB, seed {seed})")
    if check:
        n_prompt, text = smoke_generate(path)
        console.print(f"loaded back offline; judged a synthetic image pair ({n_prompt} prompt tokens) → {text!r}")
    return path
