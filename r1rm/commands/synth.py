"""`r1rm synth`: generate the synthetic preference task (the embedded default data).

Writes `<output_dir>/train.jsonl` (data.synthetic.n examples, seed),
`<output_dir>/eval.jsonl` (data.synthetic.n_eval examples, seed + 1000: the held-out test set),
`<output_dir>/val.jsonl` when data.synthetic.n_val > 0 (seed + 2000: a validation split for
choosing checkpoints, e.g. `rl.keep_best`, so the test set is not used to choose), images under
`<output_dir>/images/` for the image modality, and `config.yaml`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from r1rm.config import Config, save_config

EVAL_SEED_OFFSET = 1000
VAL_SEED_OFFSET = 2000


def run(cfg: Config) -> dict[str, Path]:
    from rich.console import Console
    from rich.table import Table

    from r1rm.data.records import read_records
    from r1rm.data.synthetic import write_dataset

    syn = cfg.data.synthetic
    seed = cfg.seed if syn.seed is None else syn.seed
    out = Path(cfg.output_dir)
    save_config(cfg)
    paths = {}
    splits = ([("train", syn.n, seed)] + ([("eval", syn.n_eval, seed + EVAL_SEED_OFFSET)] if syn.n_eval else [])
              + ([("val", syn.n_val, seed + VAL_SEED_OFFSET)] if syn.n_val else []))
    table = Table(title=f"synthetic task ({syn.modality}, levels {syn.levels})")
    for col in ("split", "file", "n", "label 1", "label 2"):
        table.add_column(col)
    for split, n, s in splits:
        paths[split] = write_dataset(
            out, n, seed=s, levels=syn.levels, modality=syn.modality, image_size=syn.image_size, prefix=split,
            teacher_error=syn.teacher_error, teacher_blind=syn.teacher_blind, teacher_mistake=syn.teacher_mistake,
        )
        labels = Counter(r.label for r in read_records(paths[split]))
        table.add_row(split, str(paths[split]), str(n), str(labels[1]), str(labels[2]))
    Console().print(table)
    return paths
