"""Source surgery with ast: find a function's body, blank it, lift it out of a student's file, put it back.

A body is the lines after the docstring (which stays: it is the exercise's contract) down to the last
line of the function. Bodies move as text, dedented, and are re-indented to where they land, so a
student's comments travel with the code.
"""

from __future__ import annotations

import ast
import io
import shutil
import subprocess
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the instructor's repository: the reference


class SourceError(ValueError):
    """A file or function the grader cannot read; names the file and what was expected."""


def _find_def(tree: ast.AST, qualname: str, path: str):
    node = tree
    for part in qualname.split("."):
        for child in getattr(node, "body", []):
            if (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and child.name == part):
                node = child
                break
        else:
            raise SourceError(f"{path}: no function {qualname}")
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise SourceError(f"{path}: {qualname} is not a function")
    return node


def _header_end(lines: list[str], fn) -> int:
    """0-based index of the line holding the ':' that ends the `def` header (no docstring to go by)."""
    text = "".join(lines[fn.lineno - 1:])
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0:
            return fn.lineno - 1 + tok.start[0] - 1
    raise SourceError(f"no ':' after def {fn.name}")


def body_span(text: str, qualname: str, path: str = "?") -> tuple[int, int, str]:
    """(start, end, indent): lines[start:end] (0-based) are the body to blank; indent is the body's."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise SourceError(f"{path}:{e.lineno}: does not parse ({e.msg})") from None
    fn = _find_def(tree, qualname, path)
    lines = text.splitlines(keepends=True)
    first = fn.body[0]
    has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
               and isinstance(first.value.value, str))
    start = first.end_lineno if has_doc else _header_end(lines, fn) + 1
    indent = " " * first.col_offset
    return start, fn.end_lineno, indent


def extract(text: str, qualname: str, path: str = "?") -> str:
    """The body (dedented text) of `qualname` in `text`."""
    start, end, _ = body_span(text, qualname, path)
    return textwrap.dedent("".join(text.splitlines(keepends=True)[start:end]))


def replace(text: str, qualname: str, body: str, path: str = "?") -> str:
    """`text` with the body of `qualname` replaced by `body` (any indentation; re-indented here)."""
    start, end, indent = body_span(text, qualname, path)
    lines = text.splitlines(keepends=True)
    body = textwrap.indent(textwrap.dedent(body), indent)
    if body and not body.endswith("\n"):
        body += "\n"
    out = "".join(lines[:start]) + body + "".join(lines[end:])
    try:
        ast.parse(out)
    except SyntaxError as e:
        raise SourceError(
            f"{path}:{e.lineno}: {qualname} does not parse once put in place ({e.msg})") from None
    return out


def blank_body(message: str) -> str:
    return f'raise NotImplementedError("{message}")\n'


def is_blank(body: str) -> bool:
    return body.strip().startswith('raise NotImplementedError("exercise ')


# ---------------------------------------------------------------------------------------------- trees

def tracked_files(root: Path = ROOT) -> list[str]:
    """The files git tracks in `root` (the working-tree content is what gets copied)."""
    try:
        r = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        r = None
    if r is None or r.returncode != 0:
        raise SourceError(f"{root}: not a git checkout (the copies hold the files git tracks)")
    return [f for f in r.stdout.split("\0") if f and (root / f).is_file()]


def copy_tree(dest: Path, root: Path = ROOT, exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy root's tracked files (never .git) into dest; `exclude` are path prefixes left out."""
    files = [f for f in tracked_files(root)
             if not any(f == x or f.startswith(x.rstrip("/") + "/") for x in exclude)]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)
    return files


def edit_file(path: Path, fn) -> None:
    """path.write_text(fn(path.read_text())) (on a temporary copy: make moves the finished copy in place)."""
    path.write_text(fn(path.read_text()))
