"""Writing files so that nothing is lost, reading text with an error that names the bad byte, and
fingerprints of what was written.

Every file a stage writes goes through `atomic_write`: the new content goes to a temporary file next to
the target (so on the same filesystem), is flushed to disk, and only then renamed over the target
(`os.replace` is atomic on POSIX and Windows). A reader, or the next run after a SIGKILL, a full disk or a
read-only folder, finds the old file or the new one, never half of one. The temporary file of a writer
that was killed is removed by the next write of the same file.

Under torchrun only rank 0 writes (see distributed.py): every rank runs the same recipe and holds the
same weights, so the other ranks' writes would be copies racing for the same path.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from pathlib import Path

from nanorlhf.config import StageError


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


def atomic_write(path, content) -> Path:
    """Replace `path` with `content`: a str (UTF-8), bytes, or a function that writes a given temp path."""
    path = Path(path)
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks: rank 0 writes the one copy
        return path
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: could not write it ({reason}); {kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
