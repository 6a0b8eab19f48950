"""Owner-only files on disk: data files 0600, folders 0700 (PIPL: the SQLite store, photos,
cached speech with read-back phone numbers, keys and logs are personal data at rest).

New files get their mode where they are created (and from the process umask the CLI sets);
`tighten_tree` fixes what an older version left readable by other users, at every start.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Process-wide: anything created later (SQLite -wal/-shm, caches, logs) is owner-only."""
    return os.umask(PRIVATE_UMASK)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Creates `path` and its missing parents with mode 0700. Folders that already exist are
    left alone here (a shared parent such as /srv must stay as it is)."""
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # a concurrent first start made it: theirs has the same mode
            continue
        # mkdir's mode passes through the umask; only ever narrower, but say it explicitly.
        os.chmod(folder, PRIVATE_DIR)
    return path


def create_private_file(path: str | os.PathLike[str]) -> Path:
    """Creates an empty file with mode 0600 if it does not exist; an existing file is tightened."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    os.close(fd)
    tighten(path)
    return path


def tighten(path: Path) -> bool:
    """Removes group/other bits from one file or folder we own; True when it changed anything.
    Symlinks are skipped: their targets may live outside the data folder."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
        return False
    if info.st_uid != os.geteuid() and os.geteuid() != 0:
        return False  # not ours to change (chmod would fail anyway)
    mode = stat.S_IMODE(info.st_mode) & ~0o077
    if stat.S_ISDIR(info.st_mode):
        mode |= PRIVATE_DIR  # the owner must still be able to list and enter it
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("could not make %s owner-only: %s", path, exc.strerror or type(exc).__name__)
        return False
    return True


def tighten_tree(root: str | os.PathLike[str]) -> int:
    """Makes every folder and file under `root` (and root itself) owner-only; returns how many
    modes changed and logs it, since a change means the data was readable by other users."""
    root = Path(root)
    if not root.is_dir():
        return 0
    changed = int(tighten(root))
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        changed += sum(tighten(base / name) for name in (*dirs, *files))
    if changed:
        log.warning("made %d files and folders under %s owner-only (they were readable by other users)",
                    changed, root)
    return changed


def secure_data_dir(data_dir: str | os.PathLike[str]) -> Path:
    """DATA_DIR at start: created 0700 if missing, an existing tree tightened."""
    path = ensure_private_dir(data_dir)
    tighten_tree(path)
    return path
