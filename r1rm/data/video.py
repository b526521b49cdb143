"""Video files → frames, with PyAV (the FFmpeg bindings): the one place r1rm decodes a video.

Engines and the trainer take a video as a list of frames (or a folder of frame images). A video
*file* (GenAI-Bench's generated videos, a request naming an .mp4) is decoded here: `decode_frames`
returns `max_frames` frames sampled uniformly over the whole video (the same rule as
`media.sample_frames` for frames folders) as PIL RGB images; `frames_folder` writes them once as
PNGs under a cache folder (the run's output folder or r1rm's cache, never next to the data) and
returns that folder, so every later step sees an ordinary frames folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from r1rm.data.files import RowError, atomic_path

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif", ".m4v")


def is_video_file(value: object) -> bool:
    """True for a path (str or Path) whose name ends like a video file."""
    return isinstance(value, str | os.PathLike) and str(value).lower().endswith(VIDEO_SUFFIXES)


def decode_frames(path: str | os.PathLike, max_frames: int | None = None) -> list:
    """The frames of video file `path` as PIL RGB images: all of them, or `max_frames` spread uniformly
    (frame i of k is the one at (i + 0.5) / k of the video). RowError missing_video / corrupt_video."""
    try:
        import av
    except ImportError:  # a declared dependency; this only fires in a broken install
        raise RowError("missing_dependency", "decoding a video file needs PyAV: pip install av") from None
    from r1rm.data.media import sample_frames

    p = Path(path)
    if not p.is_file():
        raise RowError("missing_video", f"video file not found: '{p}'")
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise RowError("corrupt_video", f"'{p}' has no video stream")
            stream = container.streams.video[0]
            n = stream.frames  # from the container's index; 0 when it does not say
            if n and max_frames:
                wanted = set(sample_frames(list(range(n)), max_frames))
                last = max(wanted)
                frames = []
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        frames.append(frame.to_image().convert("RGB"))
                    if i >= last:
                        break
                if len(frames) == len(wanted):
                    return frames
                container.seek(0)  # the index counted more frames than the stream holds: decode all
            frames = [f.to_image().convert("RGB") for f in container.decode(stream)]
    except RowError:
        raise
    except Exception as e:  # PyAV raises av.error.* (InvalidDataError, ...) for broken files
        raise RowError("corrupt_video", f"video '{p}' cannot be decoded ({type(e).__name__}: {e})") from None
    if not frames:
        raise RowError("corrupt_video", f"video '{p}' holds no frame")
    return sample_frames(frames, max_frames) if max_frames else frames


def frames_folder(path: str | os.PathLike, cache_dir: Path, max_frames: int) -> Path:
    """`max_frames` frames of video file `path` written once as 0001.png, 0002.png, … in a folder
    under `cache_dir` named after the file and a hash of its path, size and mtime; returns it."""
    p = Path(path)
    if not p.is_file():
        raise RowError("missing_video", f"video file not found: '{p}'")
    st = p.stat()
    key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{max_frames}".encode()).hexdigest()[:12]
    dest = cache_dir / f"{p.stem[:60]}-{key}"
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    frames = decode_frames(p, max_frames)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        for i, im in enumerate(frames, start=1):
            im.save(tmp / f"{i:04d}.png", format="PNG")
    return dest
