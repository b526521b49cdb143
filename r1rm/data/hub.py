"""Where rows come from: a hub dataset id, a hub snapshot folder, a parquet file or folder, or JSON(L).

`resolve_data(path, subset=..., split=...)` turns what the user wrote in `eval.path` or
`build.sources[].path` into `DataFiles`: the row files to read (in order), the folder they
belong to (a snapshot folder, or the file's folder) and the subset / split chosen.

- a **file** (.jsonl, .json, .parquet) is read as it is;
- a **folder of parquet shards** (`data/`, GenAI-Bench's `image_generation/`) is read shard by
  shard; shards of several splits (`test-00000-of-00001.parquet`, `test_v1-…`) are told apart by
  their name and one split is chosen;
- a **snapshot folder** as `hf download --repo-type dataset ID --local-dir D` writes it, or the
  hub cache's `snapshots/<sha>/`: the subsets and splits its README.md card declares
  (`configs: [{config_name, data_files: [{split, path}]}]`), else those its files show
  (`data/<split>-*.parquet`, `<subset>/<split>-*.parquet`, else JSON(L) files at the top or in
  `data/`);
- a **hub dataset id** (`ORG/NAME`, not an existing path) is resolved to its snapshot folder in
  the hub cache through huggingface_hub (`HF_HOME`, `HF_HUB_CACHE`): downloaded when online,
  taken from the cache only when `HF_HUB_OFFLINE=1`, and then read as a snapshot folder. The
  id is not handed to `datasets.load_dataset`: offline, datasets 5.2 reads only its own prepared
  arrow cache, not the hub cache's snapshots (verified), so a dataset fetched with `hf download`
  would be refused; and reading the snapshot's files keeps file:row positions for messages.

Choosing: `subset` None takes `default` or the only subset; `split` None takes the only split,
else the first of `prefer_splits` present (eval: test; build-data: train). Anything else is a
ConfigError listing what there is (exit 2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from r1rm.errors import ConfigError, DataError, InputFileError

ROW_SUFFIXES = (".parquet", ".jsonl", ".json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
# folders of a snapshot that hold media, never rows
_MEDIA_DIRS = {"images", "image", "videos", "video", "frames", ".cache", ".git", ".huggingface"}


@dataclass(frozen=True)
class DataFiles:
    """The row files behind a path, the folder they belong to, and the subset / split chosen."""

    files: tuple[Path, ...]
    folder: Path  # the snapshot / dataset folder (the file's folder for a single file)
    subset: str | None = None
    split: str | None = None
    hub_id: str | None = None

    def describe(self) -> str:
        what = self.hub_id or str(self.folder)
        parts = [p for p in (f"subset {self.subset}" if self.subset else "", f"split {self.split}" if self.split else "") if p]
        return f"{what} ({', '.join(parts)})" if parts else what


def is_hub_id(path: str) -> bool:
    """True for `ORG/NAME` that is not an existing path (and does not end like a data file)."""
    return bool(_HUB_ID.match(path)) and not os.path.exists(path) and not path.lower().endswith(ROW_SUFFIXES)


def resolve_data(path: str | os.PathLike, *, subset: str | None = None, split: str | None = None,
                 prefer_splits: tuple[str, ...] = ("test",), key: str = "eval.path",
                 revision: str | None = None) -> DataFiles:
    """The row files behind `path` (module docstring); `key` names the config field in messages."""
    text = str(path)
    hub_id = None
    if is_hub_id(text):
        hub_id = text
        p = hub_snapshot(text, revision=revision, key=key)
    else:
        p = Path(text)
        if not p.exists():
            raise InputFileError(f"{key}: '{p}' is neither a file, a folder nor a hub dataset id (ORG/NAME)",
                                 fix=f"check {key} (relative paths start from the current directory)")
        from r1rm.data.files import check_regular

        check_regular(p, what=key)  # a device or FIFO: refused before anything opens or lists it
    if p.is_file():
        return DataFiles((p,), p.parent, hub_id=hub_id)
    shards = sorted(p.glob("*.parquet"))
    if shards:
        name, files = _pick_split(_by_split(shards), split, prefer_splits, p, key)
        return DataFiles(tuple(files), p, split=name, hub_id=hub_id)
    subsets = card_subsets(p) or found_subsets(p)
    if not subsets:
        raise InputFileError(
            f"{key}: folder '{p}' holds no data files (no .parquet, and no .jsonl / .json at its top or in data/)",
            fix="point at the snapshot of a dataset (hf download --repo-type dataset ID --local-dir DIR), its data/ "
                "folder, or a .parquet / .jsonl file")
    sub = _pick_subset(subsets, subset, p, key)
    name, files = _pick_split(subsets[sub], split, prefer_splits, p, key)
    return DataFiles(tuple(files), p, subset=None if sub == "default" and subset is None else sub, split=name, hub_id=hub_id)


def hub_snapshot(hub_id: str, *, revision: str | None = None, key: str = "eval.path") -> Path:
    """The snapshot folder of dataset `hub_id` in the hub cache: downloaded when online, the cached one
    when HF_HUB_OFFLINE is set; InputFileError saying what to download when there is none."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    fix = (f"download it where there is network: `hf download --repo-type dataset {hub_id}` (into the hub cache, "
           f"HF_HOME={constants.HF_HOME}), or `hf download --repo-type dataset {hub_id} --local-dir DIR` and set {key}=DIR")
    try:
        return Path(snapshot_download(hub_id, repo_type="dataset", revision=revision, local_files_only=offline))
    except RepositoryNotFoundError:
        raise InputFileError(f"{key}: no dataset '{hub_id}' on the hub (or it is private)", fix=fix) from None
    except LocalEntryNotFoundError:
        state = "HF_HUB_OFFLINE is set and " if offline else "the hub cannot be reached and "
        raise InputFileError(f"{key}: hub dataset '{hub_id}'{f' (revision {revision})' if revision else ''}: {state}"
                             f"it is not in the hub cache ({constants.HF_HUB_CACHE})", fix=fix) from None
    except (HfHubHTTPError, OSError) as e:
        raise InputFileError(f"{key}: cannot fetch hub dataset '{hub_id}' ({type(e).__name__}: {e})", fix=fix) from None


# ---------------------------------------------------------------- subsets and splits of a folder
def card_subsets(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """{subset: {split: files}} from the README.md card's `configs`; {} when it declares none."""
    from r1rm.data.files import YamlError, load_yaml

    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.DOTALL)
    if not m:
        return {}
    try:
        meta = load_yaml(m.group(1), unique_keys=False)[0] or {}
    except YamlError as e:
        raise DataError(f"the dataset card's YAML header cannot be read ({e.brief})", where=str(readme),
                        fix="fix the card, or point at the data files themselves") from None
    out: dict[str, dict[str, list[Path]]] = {}
    for cfg in meta.get("configs") or [] if isinstance(meta, dict) else []:
        if not isinstance(cfg, dict):
            continue
        data_files = cfg.get("data_files")
        entries = data_files if isinstance(data_files, list) else [data_files]
        splits: dict[str, list[Path]] = {}
        for entry in entries:
            split, patterns = ("train", entry) if not isinstance(entry, dict) else (entry.get("split", "train"), entry.get("path"))
            for pattern in [patterns] if isinstance(patterns, str) else list(patterns or []):
                splits.setdefault(str(split), []).extend(sorted(f for f in folder.glob(pattern) if f.is_file()))
        splits = {k: v for k, v in splits.items() if v}
        if splits:
            out[str(cfg.get("config_name", "default"))] = splits
    return out


def found_subsets(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """{subset: {split: files}} from the files of a folder without a card: parquet under data/ (subset
    default) or under another top folder (that folder's name is the subset); else JSON(L) files at the
    top or in data/ (one split per file)."""
    out: dict[str, dict[str, list[Path]]] = {}
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and d.name not in _MEDIA_DIRS and not d.name.startswith(".")):
        shards = sorted(sub.rglob("*.parquet"))
        if shards:
            out["default" if sub.name == "data" else sub.name] = _by_split(shards)
    if out:
        return out
    rows = [f for d in (folder, folder / "data") if d.is_dir() for f in sorted(d.iterdir())
            if f.is_file() and f.suffix.lower() in (".jsonl", ".json") and not f.name.startswith(".")]
    return {"default": {f.stem: [f] for f in rows}} if rows else {}


def _by_split(shards: list[Path]) -> dict[str, list[Path]]:
    """Parquet shards grouped by split: `test-00000-of-00002.parquet` → test, `test_v1.parquet` → test_v1;
    a shard inside a folder named after its split (`test/0000.parquet`) takes the folder's name."""
    out: dict[str, list[Path]] = {}
    for f in shards:
        stem = _SHARD.sub("", f.stem)
        name = f.parent.name if stem.isdigit() else stem
        out.setdefault(name, []).append(f)
    return out


def _pick_subset(subsets: dict, subset: str | None, folder: Path, key: str) -> str:
    field = key.rsplit(".", 1)[0] + ".subset"
    if subset is not None:
        if subset not in subsets:
            raise ConfigError(f"{key}: '{folder}' has no subset '{subset}'; it has {', '.join(sorted(subsets))}",
                              fix=f"set {field} to one of those")
        return subset
    if "default" in subsets:
        return "default"
    if len(subsets) == 1:
        return next(iter(subsets))
    raise ConfigError(f"{key}: '{folder}' has several subsets ({', '.join(sorted(subsets))}); which one?",
                      fix=f"set {field}=NAME (e.g. {field}={sorted(subsets)[0]})")


def _pick_split(splits: dict[str, list[Path]], split: str | None, prefer: tuple[str, ...], folder: Path,
                key: str) -> tuple[str, list[Path]]:
    field = key.rsplit(".", 1)[0] + ".split"
    if split is not None:
        if split not in splits:
            raise ConfigError(f"{key}: '{folder}' has no split '{split}'; it has {', '.join(sorted(splits))}",
                              fix=f"set {field} to one of those")
        return split, splits[split]
    if len(splits) == 1:
        return next(iter(splits.items()))
    for name in prefer:
        if name in splits:
            return name, splits[name]
    raise ConfigError(f"{key}: '{folder}' has several splits ({', '.join(sorted(splits))}); which one?",
                      fix=f"set {field}=NAME")


def media_root(data: DataFiles, configured: str | os.PathLike | None, *, media_dirs: tuple[str, ...] = ()) -> Path:
    """The folder a dataset's media paths resolve against: `configured` (image_root; a .zip is unpacked)
    when set; else the first of `media_dirs` (e.g. MM-RLHF-RewardBench's images/, or images.zip
    unpacked) found in the dataset folder; else the
    folder of a JSON(L) rows file (Multimodal RewardBench's data/, beside data/images/); else the
    dataset folder."""
    if configured:
        return unzipped(Path(configured)) if str(configured).lower().endswith(".zip") else Path(configured)
    for name in media_dirs:
        if (data.folder / name).is_dir():
            return data.folder / name
        if (data.folder / f"{name}.zip").is_file():  # released zipped: unpacked once into r1rm's cache
            return unzipped(data.folder / f"{name}.zip")
    first = data.files[0]
    if first.suffix.lower() in (".jsonl", ".json"):
        return first.parent
    return data.folder


def r1rm_cache() -> Path:
    """r1rm's own cache folder: $R1RM_CACHE, else $XDG_CACHE_HOME/r1rm, else ~/.cache/r1rm."""
    if os.environ.get("R1RM_CACHE"):
        return Path(os.environ["R1RM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "r1rm"


def unzipped(archive: Path) -> Path:
    """The folder a media archive (images.zip, videos.zip) unpacks to, once, under r1rm's cache (never
    beside the data: the download may be read-only); a zip holding one top folder gives that folder.
    DataError for a file that is not a zip or a member that would land outside the folder."""
    import hashlib
    import zipfile

    from r1rm.data.files import atomic_path

    st = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = r1rm_cache() / "unzipped" / f"{archive.stem[:60]}-{key}"
    if not dest.is_dir():
        try:
            with zipfile.ZipFile(archive) as z, atomic_path(dest) as tmp:
                for name in z.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise DataError(f"zip member '{name}' would land outside the folder", where=str(archive),
                                        fix="unpack the archive yourself and set image_root to the folder")
                z.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise DataError(f"not a zip archive ({e})", where=str(archive), fix="re-download it, or unpack it yourself") from None
    tops = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else dest
