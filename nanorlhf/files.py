"""Writing files so that nothing is lost, reading text with an error that names the bad byte, and
fingerprints of what was written.

Every file a stage writes goes through `atomic_write`: to a temporary file beside the target (same
filesystem), flushed to disk, then renamed over it (`os.replace` is atomic on POSIX and Windows). A reader, or
the next run after a SIGKILL, a full disk or a read-only folder, finds the old file or the new one, never half
of one; the next write removes a killed writer's temporary file. Under torchrun only rank 0 writes (every rank
holds the same weights: the others' writes would be copies racing for one path). One writer per output folder:
every stage (and the pipeline, for its stages' folders, which they hold through its token in NANORLHF_LOCKS)
takes the folder's lock, `lock_folder`, before any work, or two runs would both "succeed", each file being
whichever wrote it last. The lock is a file naming its holder (pid, command, start time), held with flock(2),
which the kernel frees however the holder dies: a killed run's lock is taken over, never waited on.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from nanorlhf.config import StageError

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are made but not locked
    fcntl = None


class WriteError(StageError, RuntimeError):
    """A file could not be written (full disk, read-only folder); the previous file is kept."""


class DataError(StageError, ValueError):
    """Bad input data: the message names the file and line and what was expected."""


def decode_utf8(data: bytes, path) -> str:
    """`data` as UTF-8 text; a bad byte is an error naming the file, line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: byte 0x{data[e.start]:02x} at column {col} is not UTF-8 text "
                        f"(expected a UTF-8 file)") from None

def partial_path(path) -> Path:
    """Where the in-progress saves of the checkpoint `path` go: `ckpt.partial.pt` beside `ckpt.pt`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def read_bytes(path, maker: str) -> bytes:
    """The bytes of the file `path`; missing, a folder or unreadable is one line (`maker`: the command
    that makes the file)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (make it with: {maker})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, expected a file (made by: {maker})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None


def read_text(path, maker: str) -> str:
    """The UTF-8 text of the file `path` (read_bytes, then decode_utf8)."""
    return decode_utf8(read_bytes(path, maker), path)


def check_keys(row: dict, required: dict, where: str) -> None:
    """`row` has the `required` keys, each of its type (a bool is no number); else one line naming `where`."""
    for key, typ in required.items():
        if key not in row:
            raise DataError(f"{where}: missing key {key!r} (expected keys {sorted(required)})")
        if not isinstance(row[key], typ) or (typ in (int, float, (int, float))
                                             and isinstance(row[key], bool)):
            name = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise DataError(f"{where}: {key!r} must be {name}, got {type(row[key]).__name__}")


def read_json(path, maker: str, required: dict | None = None) -> dict:
    """The JSON object in the file `path`, with the `required` keys of the given types: the one reader of
    every JSON file. A missing, truncated or malformed file is one line naming the file (and the line
    where its JSON breaks) and `maker`, the command that makes it again."""
    path = Path(path)
    try:
        obj = json.loads(decode_utf8(read_bytes(path, maker), path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); remake it "
                        f"with: {maker}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}; remake it with: {maker}")
    check_keys(obj, required or {}, str(path))
    return obj


class FolderBusy(StageError, RuntimeError):
    """Another live process holds the output folder's lock."""


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun's other ranks: rank 0 writes (and locks) for all


def kept(path) -> str:
    """What a refused or failed write leaves at `path`, for the end of its message."""
    return f"{path} is kept as it was" if Path(path).exists() else f"nothing was written to {path}"


def make_folder(folder) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created (innermost last). A folder that is a
    file, lies under a file or cannot be made (read-only, sysfs) is one line naming it."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.is_dir()][::-1]
    for p in missing:
        if p.exists() or p.is_symlink():
            raise WriteError(f"{folder}: could not write it ({p} is a file, expected a folder); nothing was "
                             "written")
        try:
            p.mkdir()
        except FileExistsError:  # made by another process just now
            continue
        except OSError as e:
            raise WriteError(f"{folder}: could not write it (cannot create {p}: {e.strerror}); nothing was "
                             "written") from None
    return missing


def atomic_write(path, content) -> Path:
    """Replace `path` with `content`: a str (UTF-8), bytes, or a function that writes a given temp path."""
    path = Path(path)
    if not _main_rank():
        return path
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    make_folder(path.parent)
    try:
        remove_stale_temps(path)
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash cannot leave an empty file behind
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        if path.parent.exists():
            reason += f"; {shutil.disk_usage(path.parent).free / 1e6:.0f} MB free there"
        left = "the previous file is kept" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: could not write it ({reason}); {left}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_file(path) -> None:
    """Delete `path` if it is there (rank 0's job under torchrun, as every write)."""
    if _main_rank():
        Path(path).unlink(missing_ok=True)


def remove_stale_temps(path: Path) -> None:
    """Delete `path`'s temporary files whose writer is gone (killed during a save): `<name>.tmp<pid>`."""
    for stale in glob.glob(glob.escape(str(path)) + ".tmp*"):
        pid = stale[len(str(path)) + 4 :]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another process is writing this file right now
        Path(stale).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(paths) -> str:
    """SHA-256 over the contents of `paths` (in order, each with its name), hex: changes iff a byte does."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ one writer per folder
LOCK_NAME = ".nanorlhf.lock"
LOCK_ENV = "NANORLHF_LOCKS"  # tokens of the locks held for this process by the one that started it
_held: dict[Path, tuple[int, Path, list[Path]] | None] = {}  # folder -> (fd, lock file, folders made) or None
_token = f"{os.getpid()}-{time.time_ns()}"


def lock_token() -> str:
    """This process's lock token: put in LOCK_ENV, it lets the processes it starts write to its folders."""
    return _token


def _holder(path: Path) -> dict:
    """What a lock file says about its holder ({} if it says nothing readable)."""
    try:
        return read_json(path, "a running stage")
    except DataError:
        return {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} ({holder.get('command', 'an unknown command')}, started "
            f"{holder.get('started', 'at an unknown time')})")


def lock_folder(folder) -> Path:
    """Make `folder` this process's until the entry point (decorated with `with_locks`) returns: create it
    if needed and take its lock. Another live holder is an error naming it (FolderBusy); the lock of a dead
    one is taken over with a message; a lock held for us by the process that started us (the pipeline) is
    ours already. Taking a folder twice is a no-op."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held or not _main_rank():
        return folder
    made = make_folder(folder)
    if fcntl is None:
        _held[key] = None
        return folder
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _remove_made(made)
            raise WriteError(f"{path}: could not write it ({e.strerror}); nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            if holder.get("token") in os.environ.get(LOCK_ENV, "").split():
                _held[key] = None  # our parent's: it holds the folder for us
                return folder
            raise FolderBusy(f"{folder} is in use by {_describe(holder)}: wait for it to finish or stop it "
                             f"(its lock: {path}); nothing was written") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: take the new one
    previous = _holder(path)
    if previous:
        print(f"{folder}: taking over the lock of {_describe(previous)}, which is no longer running",
              file=sys.stderr, flush=True)
    command = " ".join(" ".join(getattr(sys, "orig_argv", sys.argv)).split())  # one line, whatever the argv
    record = {"pid": os.getpid(), "command": command[:300], "token": _token,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[key] = (fd, path, made)
    return folder


def _remove_made(made: list[Path]) -> None:
    """Remove the folders a lock made, if nothing was put in them (innermost first)."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            break


def release_folders(keep: int = 0) -> None:
    """Let go of the folders this process locked, all but the first `keep` taken: each lock file is
    removed (before its lock is released, so no one takes a lock on a file about to vanish), and a folder
    the lock made is removed again if it stayed empty."""
    for key in list(_held)[keep:]:
        entry = _held.pop(key)
        if entry is not None:
            fd, path, made = entry
            path.unlink(missing_ok=True)
            os.close(fd)
            _remove_made(made)


def with_locks(main):
    """Decorate an entry point's main(): every folder it locks is released when it returns or raises."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        held = len(_held)
        try:
            return main(*args, **kwargs)
        finally:
            release_folders(held)
    return run
