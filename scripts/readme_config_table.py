"""Regenerate README.md's config table from the schema (`r1rm config-schema`).

    python scripts/readme_config_table.py
"""

from __future__ import annotations

from pathlib import Path

from r1rm.config import schema_rows

MARKER = "<!-- config-table: regenerate from `r1rm config-schema` -->\n"


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    s = readme.read_text(encoding="utf-8")
    start = s.index(MARKER) + len(MARKER)
    while s.startswith(MARKER, start):
        start += len(MARKER)
    end = s.index("\n\n", start)
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, _type, default, help_ in schema_rows():
        rows.append(f"| `{key}` | `{default}` | {help_.replace('|', chr(92) + '|')} |")
    readme.write_text(s[:start] + "\n".join(rows) + s[end:], encoding="utf-8")


if __name__ == "__main__":
    main()
