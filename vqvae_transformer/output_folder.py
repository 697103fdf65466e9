"""Output-folder ownership: nothing a user wrote is ever replaced.

Every command-line tool that writes into a user-chosen folder records what it wrote in a manifest,
``<folder>/.vqvae_transformer_manifest.json`` (the tool's name and the relative paths of its files), written
atomically. The rules, shared by ``generate_main.py``, ``validate_main.py`` and
``python -m vqvae_transformer.analysis.codebook``:

* A missing or empty folder, or one holding only files its manifest lists for this tool, is written freely:
  re-running a command into its own folder replaces that tool's earlier output (and only it).
* A folder holding any other file (a *foreign* file; a folder with files but no manifest is all foreign) is
  refused with one line naming the folder and an example file, before any expensive work.
* ``--overwrite`` lets the tool write *beside* foreign files; it still only replaces or removes files its
  manifest lists. If a foreign file sits where the tool writes (for generation: inside a requested ``ID_<k>``
  folder, or ``grid.png`` / ``generation_info.json``), the tool refuses even with ``--overwrite``: mixing
  generated and real images in one user folder is never what anyone wants.
* A folder whose manifest belongs to another tool is refused, with or without ``--overwrite``.

Staging folders (``.<name>.<kind>-<host>-<pid>-<random>`` beside the target) carry the host and process id of
their writer, so a later run removes the ones whose process is gone (:func:`clear_stale_staging`).
:func:`sigterm_as_keyboard_interrupt` turns SIGTERM into :class:`~vqvae_transformer.errors.Terminated` (a
``KeyboardInterrupt``) so ``finally`` clean-up runs; the CLI then exits 143.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .atomic import write_json_atomic
from .errors import Terminated, UserInputError

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".vqvae_transformer_manifest.json"
MANIFEST_FORMAT = "vqvae_transformer.output_manifest/1"

__all__ = ["MANIFEST_NAME", "OutputFolder", "check_writable", "clear_stale_staging", "make_staging_dir",
           "prepare_output_folder", "read_manifest", "sigterm_as_keyboard_interrupt"]


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder`` as a dict, or None when it is missing or unreadable (then nothing is owned)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        return None
    return record


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file (and link) under ``folder``, the manifest itself excluded, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = Path(root, name).relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def _under(rel: str, reserved: Iterable[str]) -> bool:
    """True when ``rel`` is one of ``reserved`` or lies inside one of them."""
    return any(rel == r or rel.startswith(r.rstrip("/") + "/") for r in reserved)


@dataclasses.dataclass
class OutputFolder:
    """An output folder checked by :func:`prepare_output_folder`; ``files`` are the ones this tool owns."""

    path: Path
    tool: str
    files: set[str]
    meta: dict
    foreign: set[str] = dataclasses.field(default_factory=set)

    def owns(self, rel: str) -> bool:
        """True when the relative path ``rel`` was written by this tool (listed in its manifest)."""
        return rel in self.files

    def record(self, added: Iterable[str] = (), removed: Iterable[str] = (), meta: dict | None = None) -> None:
        """Add/remove relative paths (and replace ``meta``) and write the manifest atomically.

        Register a file *before* moving it into place: a listed file that is missing is harmless, an
        unlisted one would look foreign to the next run.
        """
        self.files |= set(added)
        self.files -= set(removed)
        if meta is not None:
            self.meta = meta
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "tool": self.tool,
                                                       "files": sorted(self.files), "meta": self.meta})

    def record_present(self, meta: dict | None = None) -> None:
        """After a run, list every file now in the folder as this tool's, except the foreign ones found before."""
        self.record(added=[rel for rel in list_files(self.path) if rel not in self.foreign], meta=meta)


def check_writable(path: str | os.PathLike, flag: str = "--output_dir", staging_beside: bool = False) -> Path:
    """Raise UserInputError (one line) unless ``path`` can be created or written, without creating it.

    Checks that ``path`` is not a file and that it (or its nearest existing ancestor, where it would be
    created, and its parent, where staging folders go) is a writable folder. Probing creates and removes
    a temporary file, so the check also holds for root and read-only file systems. ``staging_beside``: the
    tool stages beside the folder, so its parent must be writable too even when the folder exists.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{flag} {path} is a file, not a folder; pass a folder path")
    probes = [path] if path.is_dir() else []
    ancestor = path.parent.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"{flag} {path} cannot be created: {ancestor} is a file, not a folder")
    if staging_beside or not probes:
        probes.append(ancestor)
    for folder in probes:
        try:
            fd, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        except OSError as err:
            raise UserInputError(f"{flag} {path}: cannot write in {folder} ({err.strerror}); "
                                 "choose a writable folder") from err
        os.close(fd)
        os.unlink(name)
    return path


def prepare_output_folder(path: str | os.PathLike, tool: str, overwrite: bool = False,
                          reserved: Iterable[str] = (), flag: str = "--output_dir",
                          staging_beside: bool = False) -> OutputFolder:
    """Check ``path`` against the ownership rules (module docstring) before any work; nothing is written.

    Args:
        path: the output folder (may not exist yet).
        tool: this tool's name, stored in the manifest.
        overwrite: the user passed ``--overwrite``: foreign files outside ``reserved`` are allowed (and kept).
        reserved: relative paths (files or folders) this run writes; a foreign file there is always refused.
        flag: the flag named in error messages.
        staging_beside: the tool stages beside the folder (see :func:`check_writable`).

    Returns:
        The folder with the files this tool already owns (listed in the manifest and present).

    Raises:
        UserInputError: the path is not writable, or foreign files are in the way.
    """
    path = check_writable(path, flag, staging_beside)
    if not path.is_dir():
        return OutputFolder(path, tool, set(), {})
    present = list_files(path)
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("tool") != tool:
        raise UserInputError(f"{flag} {path} holds the output of {manifest.get('tool')}, not {tool}; "
                             "choose another folder")
    listed = set(manifest["files"]) if manifest else set()
    reserved = list(reserved)
    for rel in [rel for rel in present if rel not in listed and _own_leftover(rel, listed, reserved)]:
        (path / rel).unlink()  # a temporary file of this tool's atomic writes, left by a killed run
        logger.info("removed %s, left by an interrupted write", path / rel)
        present.remove(rel)
    foreign = [rel for rel in present if rel not in listed]
    if foreign and not overwrite:
        raise UserInputError(f"{flag} {path} holds {len(foreign)} file(s) {tool} did not write (e.g. {foreign[0]}); "
                             "nothing was changed: choose another folder, or pass --overwrite to write beside "
                             "them (they are never deleted)")
    clash = [rel for rel in foreign if _under(rel, reserved)]
    if clash:
        raise UserInputError(f"{flag} {path}: {clash[0]} was not written by {tool} and is where it would write; "
                             "it never replaces such files, even with --overwrite: move it away or choose "
                             "another folder")
    owned = listed & set(present)
    meta = manifest.get("meta") if manifest and isinstance(manifest.get("meta"), dict) else {}
    return OutputFolder(path, tool, owned, meta, set(foreign))


_ATOMIC_LEFTOVER = re.compile(r"^\.(?P<base>.+?)\.[A-Za-z0-9_]+\.tmp(?:\.png)?$")


def _own_leftover(rel: str, listed: set[str], reserved: list[str]) -> bool:
    """True for ``.<name>.<random>.tmp`` (an atomic write's temporary file) of a file this tool owns or writes."""
    parent, _, name = rel.rpartition("/")
    match = _ATOMIC_LEFTOVER.match(name)
    if not match:
        return False
    target = f"{parent}/{match.group('base')}" if parent else match.group("base")
    return target == MANIFEST_NAME or target in listed or _under(target, reserved)


def _host_tag() -> str:
    """This machine's name reduced to letters and digits (part of staging folder names)."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def make_staging_dir(target: str | os.PathLike, kind: str) -> Path:
    """Create ``.<target name>.<kind>-<host>-<pid>-<random>`` beside ``target`` (parents created)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))


def _pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (or may: no permission to signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_staging(target: str | os.PathLike, kind: str) -> list[Path]:
    """Remove staging folders of ``target`` left by dead processes of this host; returns what was removed.

    Only names made by :func:`make_staging_dir` with the same ``kind`` and host match, and only when their
    process id no longer exists; anything else beside ``target`` is left alone.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.name}.{kind}-{_host_tag()}-") + r"(\d+)-[A-Za-z0-9_]+$")
    removed = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry)
            logger.info("removed the stale staging folder %s of an interrupted run", entry)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises :class:`~vqvae_transformer.errors.Terminated`, a
    ``KeyboardInterrupt``, so clean-up in ``finally`` runs and :func:`vqvae_transformer.cli.run_cli` prints one
    line and exits 143 (Ctrl-C: 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
