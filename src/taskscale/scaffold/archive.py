"""``python -m taskscale.scaffold.archive``: ship the live template as the archive of a version.

A maintainer's tool (see docs/update.md): run it before a release, so ``taskscale update`` can
re-render projects generated from this template after the template changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from taskscale import __version__, console
from taskscale.scaffold.releases import archive_template, default_catalog, tree_digest


def main(argv: list[str] | None = None) -> int:
    catalog = default_catalog()
    parser = argparse.ArgumentParser(prog="python -m taskscale.scaffold.archive")
    parser.add_argument("--source", type=Path, default=catalog.current, help="template tree")
    parser.add_argument("--version", default=__version__, help="the taskscale version it is")
    parser.add_argument("--releases", type=Path, default=catalog.releases, help="archive folder")
    args = parser.parse_args(argv)
    target = archive_template(args.source, args.version, args.releases)
    console.print_text(f"{target} ({tree_digest(args.source)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
