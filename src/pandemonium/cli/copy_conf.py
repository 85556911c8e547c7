"""``pandemonium-copy-conf DIR``: copy the built-in config tree to DIR for editing.

Then ``export PANDEMONIUM_CONFIGS_PATH=DIR``: Hydra searches DIR first, so edited files replace the
built-in ones and new files (e.g. ``DIR/mode/my_mode.yaml``) add modes and options.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from pandemonium.cli.main import CONFIG_DIR, CONFIGS_PATH_ENV


def copy_config_tree(target: str | Path, force: bool = False) -> list[Path]:
    """Copy every config file to ``target``; existing files are kept unless ``force``. Returns the copies."""
    target = Path(target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    copied = []
    for source in sorted(CONFIG_DIR.rglob("*")):
        if not source.is_file() or source.suffix not in {".yaml", ".yml"}:
            continue
        dest = target / source.relative_to(CONFIG_DIR)
        if dest.exists() and not force:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        copied.append(dest)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pandemonium-copy-conf", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder to copy the config tree into (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist in DIR")
    args = parser.parse_args(argv)
    try:
        copied = copy_config_tree(args.dir, force=args.force)
    except OSError as exc:
        print(f"pandemonium-copy-conf: error: {exc}", file=sys.stderr)
        return 2
    target = Path(args.dir).expanduser().absolute()
    print(f"copied {len(copied)} config files to {target}" + ("" if args.force else " (existing files kept)"))
    print("use them with:")
    print(f"  export {CONFIGS_PATH_ENV}={target}")
    print("files there override the built-in ones; add your own modes as "
          f"{target / 'mode' / '<name>.yaml'} and run `pandemonium <name>`")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
