"""The examples a new installation starts from: the configuration, campaigns and templates
of the loa checkout, written by ``loa init`` where the configuration expects them.

Nothing is ever overwritten: a configuration file, campaigns folder or templates folder
that exists is the user's, even if it is empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import loa
from loa.errors import LoaError

CONFIG = "config.example.toml"
FOLDERS = ("campaigns", "templates")


def source() -> Path:
    """The loa checkout that holds the examples (an editable install's clone)."""
    root = Path(loa.__file__).resolve().parent.parent
    missing = [name for name in (CONFIG, *FOLDERS) if not (root / name).exists()]
    if missing:
        raise LoaError(f"the examples ({', '.join(missing)}) are not beside this loa ({root}); "
                       "install with `pip install -e .` from a clone, or use --no-examples")
    return root


def write_config(target: Path) -> Path:
    """config.example.toml copied to ``target``, which must not exist."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("x", encoding="utf-8") as f:   # "x": never replaces a file that appeared meanwhile
        f.write((source() / CONFIG).read_text(encoding="utf-8"))
    return target


def write_folders(campaigns_dir: Path, templates_dir: Path) -> list[tuple[str, Path]]:
    """The example campaigns and templates, each into its folder if that folder does not exist:
    (what, where) for each folder written."""
    written = []
    for name, target in zip(FOLDERS, (campaigns_dir, templates_dir), strict=True):
        if target.exists():
            continue
        shutil.copytree(source() / name, target)
        written.append((name, target))
    return written
