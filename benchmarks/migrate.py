"""``python -m benchmarks.migrate FOLDER...``: rewrite result folders written before issue 35 so that they record no
absolute local path (:mod:`benchmarks.local_paths`), in place.

Every ``config.json`` (a run folder), ``sources.json`` (a findings or class-order report) and ``tuning.json`` (a
tuning) below the given folders is rewritten the way the harness now writes it: inputs by name, size and SHA-256,
paths inside the folder relative to it, any other absolute path cut to its last part. Numbers, identities and
every other key are kept as they are, so a resume and the tables read a migrated folder as before. Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avalanche_sdlora.atomic import write_text

from .local_paths import portable_record

RECORDS = ("config.json", "sources.json", "tuning.json")


def migrate(root: str | Path) -> list[Path]:
    """Rewrite every record below ``root`` that holds an absolute path; returns the files changed."""
    changed = []
    for name in RECORDS:
        for path in sorted(Path(root).rglob(name)):
            before = json.loads(path.read_text())
            after = portable_record(before, path.parent)
            if after != before:
                write_text(path, json.dumps(after, indent=2) + "\n")
                changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="result folders to rewrite in place (e.g. results)")
    args = p.parse_args(argv)
    missing = [f for f in args.folders if not Path(f).is_dir()]
    if missing:
        p.error(f"not a folder: {', '.join(missing)}; pass result folders (e.g. results)")
    changed = [c for f in args.folders for c in migrate(f)]
    for c in changed:
        print(f"rewritten: {c}")
    print(f"{len(changed)} file(s) rewritten")
    return changed


if __name__ == "__main__":
    main()
