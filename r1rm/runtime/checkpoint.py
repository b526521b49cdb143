"""Checkpoints that survive a kill: atomic (temp folder + rename), last N kept, exact resume.

A checkpoint `<output_dir>/checkpoints/step-0000100/` holds the model in Hugging Face format
(loads with `from_pretrained`, `r1rm eval`, `r1rm rl`), `state/` (optimizer, scheduler, RNG
of every process, via accelerate — DeepSpeed's own format under ZeRO) and
`trainer_state.json` (step, data position, counters). It is written under a `.tmp-` name and
renamed only when complete, and a checkpoint is deleted (pruned, or replaced by a rerun's save
of the same step) only after being renamed to a `.del-` name, so a run killed at any moment
leaves either the previous checkpoints or the new one — never half of one.

`<output_dir>/best/` (rl.keep_best) holds the policy with the best periodic-eval score so far, in
Hugging Face format, with `best.json` (step, metric, value) written last. A new best is written
as `.tmp-best`, the old one renamed to `.del-best`, the new one renamed in; `recover_best` (run at
start) finishes or undoes a swap a kill interrupted, so `best/` is always one complete model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from r1rm.config import RENAMED_KEYS, Config
from r1rm.data.files import YamlError, load_yaml, read_json, write_json_atomic
from r1rm.errors import ConfigError
from r1rm.runtime.modelprep import save_hf

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
BEST = "best"
BEST_RECORD = "best.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint folder without a kill ever leaving part of it under its `step-` name."""
    trash = path.with_name(f".del-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


EXTRA = "extra_state.pt"


def remove_partial_checkpoints(out_dir: str | os.PathLike) -> list[str]:
    """Delete the `.tmp-step-*` / `.del-step-*` folders a killed run left (main process, no writer running);
    return their names. Every start calls it (runtime.training.resume), finished run or not."""
    root = Path(out_dir) / CHECKPOINTS
    stale = sorted([*root.glob(".tmp-step-*"), *root.glob(".del-step-*")]) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


# The kill-and-resume tests' hook: _R1RM_TEST_KILL_AT="phase:n" SIGKILLs the process the n-th time it
# reaches `kill_point(phase)` ("load": model loaded, checkpoint state not yet; "step": mid-step, after the
# backward pass and before the optimizer step; "checkpoint": mid-checkpoint, weights written to the
# .tmp- folder and nothing else; "end": after summary.json; eval's "record": after the n-th generation
# record). A moment by phase, not by wall time, so a slower machine kills at the same place.
_KILL_SEEN: dict[str, int] = {}


def kill_point(phase: str) -> None:
    """SIGKILL this process here when _R1RM_TEST_KILL_AT names this phase and this is its n-th visit
    (tests only; one dictionary lookup when unset)."""
    at = os.environ.get("_R1RM_TEST_KILL_AT")
    if not at:
        return
    name, _, n = at.partition(":")
    if name != phase:
        return
    _KILL_SEEN[phase] = _KILL_SEEN.get(phase, 0) + 1
    if _KILL_SEEN[phase] == int(n or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator, model, processor, out_dir: str | os.PathLike, *, step: int, trainer_state: dict,
                    keep_last: int, extra: dict | None = None) -> Path:
    """Every process calls this (ZeRO gathers need them all); the main process writes and renames.
    `extra`: tensors a resumed run needs besides the model and optimizer (torch.save, main process)."""
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        remove_partial_checkpoints(out_dir)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        save_hf(accelerator.unwrap_model(model), processor, tmp, state_dict=state_dict)
        kill_point("checkpoint")
    accelerator.save_state(str(tmp / "state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra is not None:
            import torch

            torch.save(extra, tmp / EXTRA)
        write_json_atomic(tmp / STATE, trainer_state)
        if final.exists():  # a rerun saving the same step again (e.g. resumed from its final checkpoint)
            _remove_dir(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out_dir)[:-keep_last]:
            _remove_dir(old)
    accelerator.wait_for_everyone()
    return final


# What a resumed training run must share with the run that wrote its checkpoints: the settings
# that shape the trajectory. How long it runs, how often it saves and evaluates, and the runtime
# (logging, progress, device placement) may change between a run and its resume.
RESUME_SECTIONS = {"sft": ("seed", "model.", "data.train", "data.image_root", "data.prompt", "sft."),
                   "rl": ("seed", "model.", "data.train", "data.eval", "data.image_root", "data.prompt", "rl."),
                   # eval: what decides the generations already written (the model, its inputs, the sampling)
                   "eval": ("seed", "model.path", "model.dtype", "model.min_pixels", "model.max_pixels",
                            "model.video_max_frames", "data.prompt", "generation.", "engine.kind", "engine.model_name",
                            "engine.base_url", "eval.benchmark", "eval.path", "eval.k", "eval.temperature",
                            "eval.answer_fallback"),
                   # judge: the same, for verdicts (the input file is fingerprinted beside these)
                   "judge": ("seed", "model.path", "model.dtype", "model.min_pixels", "model.max_pixels",
                             "model.video_max_frames", "data.prompt", "generation.", "engine.kind",
                             "engine.model_name", "engine.base_url", "judge.both_orders")}
# the consistency checker's endpoint and model stay free as they were under their old names (judge.*,
# outside the rl identity)
RESUME_FREE = ("model.gradient_checkpointing", "model.attn_implementation", "sft.max_steps", "sft.save_every_steps",
               "sft.eval_every_steps", "sft.eval_limit",
               "sft.keep_last", "rl.max_steps", "rl.save_every_steps", "rl.keep_last", "rl.eval_every_steps",
               "rl.eval_limit", "rl.consistency.engine_kind", "rl.consistency.base_url", "rl.consistency.model_name",
               "rl.consistency.api_key_env", "rl.consistency.timeout_s", "rl.consistency.temperature",
               "rl.consistency.retries", "rl.consistency.max_retries", "rl.consistency.retry_budget_s")


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out: dict = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _in_sections(key: str, command: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUME_SECTIONS[command])


def identity_of(dump: dict, command: str) -> dict:
    """The dotted settings of a config dump (`model_dump(mode="json")` or a run's config.yaml) that a
    resume of `command` ("sft" / "rl") must find unchanged."""
    return {k: v for k, v in _flatten(dump).items() if _in_sections(k, command) and k not in RESUME_FREE}


def run_identity(cfg: Config, command: str) -> dict:
    return identity_of(cfg.model_dump(mode="json"), command)


def identity_changes(saved: dict, current: dict) -> list[str]:
    """`key: saved -> now` for every setting both record with different values (a key only one
    side has is a schema difference between r1rm versions, not a change of the run)."""
    return [f"{k}: {saved[k]!r} -> {current[k]!r}" for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]


def refuse_renamed(out_dir: str | os.PathLike, ckpt: Path, saved: dict | None, command: str) -> None:
    """Refuse a run written before config.RENAMED_KEYS's renames whose checkpoint identity (`saved`) or
    config.yaml spells a setting of `command`'s identity by its old name: identity_changes compares
    only the keys both sides record, so the resume would drop that setting silently."""
    config = Path(out_dir) / "config.yaml"
    try:
        dump = load_yaml(config.read_text(encoding="utf-8"))[0] if config.is_file() else None
    except (YamlError, UnicodeDecodeError):
        dump = None
    spelled = {**_flatten(dump if isinstance(dump, dict) else {}), **(saved or {})}
    old = [f"{k} -> {new}" for k, new in RENAMED_KEYS.items() if k in spelled and _in_sections(new, command)]
    if old:
        where = ckpt / STATE if any(k in (saved or {}) for k in RENAMED_KEYS) else config
        raise ConfigError(f"{out_dir} holds checkpoints ({ckpt.name}) of a run written before these settings were "
                          f"renamed, which this run would resume: {', '.join(old)}", where=str(where),
                          fix="use a new output_dir, or set runtime.resume=false to start over in this one "
                              "(recipes and overrides spell the new names)")


def _listed(changes: list[str], most: int = 6) -> str:
    return "; ".join(changes[:most]) + (f"; and {len(changes) - most} more" if len(changes) > most else "")


def check_resumable(out_dir: str | os.PathLike, identity: dict, command: str,
                    data_paths: list[str] = ()) -> Path | None:
    """The checkpoint a run would resume from, after checking it was written by a run with the same
    settings (`identity`, run_identity): resuming another run's checkpoint — a reused
    output_dir after the data or the recipe changed — would silently continue the wrong run.
    Checkpoints written before the settings were recorded are compared with the run's
    config.yaml (written when it started), and refused when a data file is newer than them; a run
    that spells renamed settings by their old names is refused (refuse_renamed)."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    state = read_json(ckpt / STATE, allow_nan=True, fix=f"delete {ckpt} to resume from the one before, or use a new output_dir")
    saved = state.get("run") if isinstance(state, dict) else None
    refuse_renamed(out_dir, ckpt, saved, command)
    where = ckpt / STATE
    if saved is None and (Path(out_dir) / "config.yaml").is_file():
        where = Path(out_dir) / "config.yaml"
        try:
            dump = load_yaml(where.read_text(encoding="utf-8"))[0]
        except YamlError as e:
            raise ConfigError(f"the run's config.yaml cannot be read: {e.brief}", where=str(where),
                              fix="use a new output_dir, or delete this one to start over") from None
        saved = identity_of(dump, command) if isinstance(dump, dict) else None
        from r1rm.data.training_sets import data_files
        from r1rm.errors import R1RMError

        try:
            newer = [str(f) for f in data_files(list(data_paths)) if f.stat().st_mtime > (ckpt / STATE).stat().st_mtime]
        except (R1RMError, OSError):
            newer = []
        if newer:
            raise ConfigError(f"{out_dir} holds checkpoints ({ckpt.name}) written before the training data was "
                              f"rewritten ({', '.join(newer[:3])}), which this run would resume",
                              where=str(ckpt / STATE), fix="use a new output_dir, or delete this one to start over")
    changes = identity_changes(saved, identity) if saved is not None else []
    if changes:
        raise ConfigError(f"{out_dir} holds checkpoints of a run with other settings, which this run would resume "
                          f"({ckpt.name}): {_listed(changes)}", where=str(where),
                          fix="use a new output_dir, delete this one to start over, or run with the settings "
                              "the checkpoints were written with")
    return ckpt


def model_stamp(path: str) -> str:
    """Names, sizes and modification times of a local model folder's weight and config files,
    hashed: changes when the weights under the same path are rewritten (a new best/, a retrained
    model), without reading gigabytes. A hub id or endpoint model name stamps as itself."""
    import hashlib

    p = Path(path)
    if not p.is_dir():
        return str(path)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in {".safetensors", ".bin", ".pt", ".json"})
    return hashlib.sha256("\n".join(f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()


# run.json keys compared by check_same_eval on their own: the media a run's records refer to
# ({path as written: "size:hash:mtime_ns"}: size and hash compared; the mtime only spares a resume re-reading
# a file) and the folder they resolved against (said, not compared)
MEDIA, MEDIA_ROOT = "media", "media_root"


def media_paths(records: list) -> list[str]:
    """The image / video paths of records (r1rm.data.records.Record), as written, in order."""
    paths: list[str] = []
    for rec in records:
        paths += list(rec.images)
        paths += [rec.video] if isinstance(rec.video, str) else list(rec.video)
        for r in (rec.response1, rec.response2):
            if r.kind != "text":
                paths += [r.visual] if isinstance(r.visual, str) else list(r.visual)
    return [p for p in paths if p]


def media_stamps(records: list, root: str | os.PathLike | None, *, earlier: dict | None = None) -> dict[str, str]:
    """{path as the records write it: "bytes:blake2b:mtime_ns"} for every media file they refer to (a folder of
    frames: each file in it, "folder/name"), resolved against `root`; a missing one is left out (reading
    the records reports or skips it). A content hash, so a copied folder with the same images still matches,
    and another image under the same name does not. `earlier`: the stamps run.json recorded (earlier_media) —
    a file whose size and mtime are those recorded keeps its recorded hash unread, so a resume only stats
    its media; a fresh start (nothing recorded) reads each file once."""
    import hashlib

    earlier = earlier or {}
    stamps: dict[str, str] = {}
    for rel in dict.fromkeys(media_paths(records)):
        if "://" in rel or rel.startswith("data:"):
            continue  # a URL or inline data: part of the data file, which is fingerprinted whole
        full = Path(root or ".", rel)
        files = sorted((f"{rel.rstrip('/')}/{f.name}", f) for f in full.iterdir() if f.is_file()) if full.is_dir() \
            else [(rel, full)]
        for name, f in files:
            try:
                st = f.stat()
                old = str(earlier.get(name, "")).split(":")
                if len(old) == 3 and old[0] == str(st.st_size) and old[2] == str(st.st_mtime_ns):
                    stamps[name] = f"{st.st_size}:{old[1]}:{st.st_mtime_ns}"
                    continue
                h = hashlib.blake2b(digest_size=12)
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                stamps[name] = f"{st.st_size}:{h.hexdigest()}:{st.st_mtime_ns}"
            except OSError:
                continue
    return stamps


def earlier_media(out_dir: str | os.PathLike) -> dict:
    """The media stamps an earlier start recorded in `out_dir`/run.json ({} when none, or unreadable:
    check_same_eval says what is wrong with the file)."""
    from r1rm.data.files import LineError, loads_json

    try:
        saved = loads_json((Path(out_dir) / "run.json").read_bytes())
    except (OSError, LineError):
        return {}
    media = saved.get(MEDIA) if isinstance(saved, dict) else None
    return media if isinstance(media, dict) else {}


def _media_changes(saved: dict, identity: dict) -> list[str]:
    """The media both runs refer to whose content differs (an item only one run has is no mix-up)."""
    old, new = saved.get(MEDIA), identity.get(MEDIA)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []

    def content(stamp: object) -> list[str]:  # size and hash; a changed mtime with the same content is the same
        return str(stamp).split(":")[:2]

    return [f"{k}: {content(old[k])[0]} -> {content(new[k])[0]} bytes" if content(old[k])[0] != content(new[k])[0]
            else f"{k}: other content, same size" for k in sorted(set(old) & set(new)) if content(old[k]) != content(new[k])]


def check_same_eval(out_dir: Path, identity: dict, generations: list[Path], *, what: str = "generations",
                    command: str = "eval") -> None:
    """An eval (judge) folder already holding generations (verdicts) resumes only the same run
    (`run.json`): the same model weights, inputs, media and sampling — else its rows would be counted
    for another model or other images."""
    record = out_dir / "run.json"
    if not record.is_file() or not any(g.is_file() and g.stat().st_size for g in generations):
        return
    try:
        saved = json.loads(record.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ConfigError(f"{record} is not a run record ({e})", where=str(record),
                          fix=f"delete {out_dir} to {command} again, or use a new output_dir") from None
    plain = {k: v for k, v in saved.items() if k not in (MEDIA, MEDIA_ROOT)}
    changes = identity_changes(plain, {k: v for k, v in identity.items() if k not in (MEDIA, MEDIA_ROOT)})
    media = _media_changes(saved, identity)
    if media:
        roots = (f" (media root then {saved.get(MEDIA_ROOT)!r}, now {identity.get(MEDIA_ROOT)!r})"
                 if saved.get(MEDIA_ROOT) != identity.get(MEDIA_ROOT) else "")
        changes.append(f"{len(media)} image(s) changed since its {what} were written{roots}: {_listed(media, 3)}")
    if changes:
        raise ConfigError(f"{out_dir} holds {what} of another {command} run, which this run would resume: "
                          f"{_listed(changes)}", where=str(record),
                          fix=f"use a new output_dir, or delete {out_dir} to {command} again "
                              "(or restore the settings / images it was run with)")


def load_checkpoint(accelerator, ckpt: Path) -> dict:
    """Restore optimizer, scheduler, model and RNG states; return the trainer state."""
    accelerator.load_state(str(ckpt / "state"))
    return json.loads((ckpt / STATE).read_text())


def finished_before(out_dir: str | os.PathLike, ckpt: Path | None, *, step: int, resumed_at: int) -> bool:
    """A rerun of a finished run: resumed from its final checkpoint with nothing left to train, and its
    model and summary.json written. It returns without saving again — a rewrite would change the
    model's stamp, and an eval of that model would then refuse to resume its generations."""
    out = Path(out_dir)
    return (ckpt is not None and step == resumed_at and json.loads((ckpt / STATE).read_text()).get("final", False)
            and (out / "summary.json").is_file() and (out / "model").is_dir())


def load_extra(ckpt: Path) -> dict | None:
    """What save_checkpoint's `extra` wrote, or None for a checkpoint without it."""
    import torch

    path = ckpt / EXTRA
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def recover_best(out_dir: str | os.PathLike) -> dict | None:
    """Finish or undo a `best/` swap that a kill interrupted; return best.json's record (None: none)."""
    out = Path(out_dir)
    best, tmp, old = out / BEST, out / f".tmp-{BEST}", out / f".del-{BEST}"
    if not best.exists():
        if (tmp / BEST_RECORD).is_file():  # killed between the two renames: the new one is complete
            os.replace(tmp, best)
        elif old.exists():  # killed before the new one was complete: put the old one back
            os.replace(old, best)
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    rec = best / BEST_RECORD
    return json.loads(rec.read_text()) if rec.is_file() else None


def save_best(accelerator, model, processor, out_dir: str | os.PathLike, *, record: dict) -> Path:
    """Every process calls this (ZeRO gathers); the main process writes `<out_dir>/best/` atomically."""
    out = Path(out_dir)
    best, tmp, old = out / BEST, out / f".tmp-{BEST}", out / f".del-{BEST}"
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        recover_best(out)
        save_hf(accelerator.unwrap_model(model), processor, tmp, state_dict=state_dict)
        write_json_atomic(tmp / BEST_RECORD, record)  # last: marks the new one complete
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return best
