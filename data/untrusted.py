"""Inputs someone else may have written: case ids, paths built from them, JSON/YAML, volume sizes.

Checkpoints, cohorts, caches and prediction folders are shared between people. Every name the
tool turns into a path and every structured file it parses passes through here, once:
    - a case id is a name, never a path: it fully matches CASE_ID_PATTERN (a letter or digit
      first, then letters, digits, `_`, `.`, `-`; at most 128 characters; no `..`), so it cannot
      climb out of a folder or name an absolute path;
    - a path built from one is checked to stay inside its root (`inside`, `case_path`);
    - JSON and YAML are read with a size limit (MAX_TEXT_BYTES) and a nesting/size limit on what
      they hold (MAX_DEPTH levels, MAX_NODES values, counted with YAML aliases expanded, so an
      alias bomb is refused before anything walks or prints it);
    - a volume's voxel count is bounded (`check_voxels`) before its data is read: the limit is
      MAX_VOXELS (4x KiTS19's largest case), or $FAIRKITS_MAX_VOXELS;
    - values quoted in a message are shortened (`short`): a message is one line, whatever the input.
Each failure is a CaseError (one line naming the file or case and the problem).

Usage:
    check_case_id(case_id, where="cases.csv row 3")   # -> case_id, or CaseError
    parser.add_argument("--cases", type=case_list)    # comma-separated, each checked
    path = case_path(cache_root, case_id, ".npy")       # both at once
    path = inside(root, root / case_id / "imaging.nii.gz", where=case_id)
    data = read_json(path)                 # size, depth and node limits; CaseError naming the file
    data = read_yaml(path)                 # the same for YAML (aliases counted expanded)
    data = parse_yaml_value(text, where="--set a.b")   # one override's value
    check_voxels(shape, where="case_00012/imaging.nii.gz")
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import yaml

from data.errors import CaseError

CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_TEXT_BYTES = 64 * 2**20        # a kits.json of 300 cases is 0.2 MB; a summary.json of 10^5 cases ~60 MB
MAX_DEPTH = 64                     # real files nest 4 levels
MAX_NODES = 5_000_000              # values in one file, aliases expanded
MAX_VOXELS = 4 * 1059 * 512 * 512  # KiTS19's largest case (case_00160 shape) times 4


def short(value, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, without walking more of it than needed."""
    if isinstance(value, (dict, list, tuple)):
        items = list(value.items()) if isinstance(value, dict) else list(value[:11])
        flat = len(value) <= 10 and not any(isinstance(v, (dict, list, tuple)) for pair in items
                                            for v in (pair if isinstance(value, dict) else (pair,)))
        text = repr(value) if flat else f"a {type(value).__name__} of {len(value)} entries"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_case_id(case_id, where: str = "case id") -> str:
    """`case_id` if it is a plain name (CASE_ID_PATTERN, no `..`); CaseError otherwise."""
    if not isinstance(case_id, str) or not CASE_ID_PATTERN.fullmatch(case_id) or ".." in case_id:
        raise CaseError(where, f"{short(case_id)} is not a plain case id (letters, digits, _ . -, starting "
                               "with a letter or digit, no '..'); refusing to use it in a path")
    return case_id


def inside(root, path, where: str | None = None, *, follow_links: bool = False) -> Path:
    """`path` if it lies inside `root`; CaseError otherwise. Lexically (`..` and absolute paths
    caught) by default: a user's own data folders may be links; `follow_links` resolves them too."""
    if follow_links:
        root_abs, path_abs = Path(root).resolve(), Path(path).resolve()
    else:
        root_abs, path_abs = (Path(os.path.normpath(os.path.abspath(p))) for p in (root, path))
    if path_abs != root_abs and root_abs not in path_abs.parents:
        raise CaseError(where or str(path), f"{path} leads outside {root}; refusing to read or write it")
    return Path(path)


def case_path(root, case_id, suffix: str = "") -> Path:
    """root / (case_id + suffix), the id checked to be a plain name and the path to stay in root."""
    root = Path(root)
    return inside(root, root / f"{check_case_id(case_id)}{suffix}", where=case_id)


def case_list(text: str) -> list[str]:
    """Comma-separated case ids (an argparse type: --cases / --only), each a plain name."""
    ids = [c.strip() for c in text.split(",") if c.strip()]
    try:
        return [check_case_id(c) for c in ids]
    except CaseError as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def max_voxels() -> int:
    raw = os.environ.get("FAIRKITS_MAX_VOXELS")
    if raw is None:
        return MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        raise CaseError("$FAIRKITS_MAX_VOXELS", f"{short(raw)} is not a whole number of voxels") from None
    if value < 1:
        raise CaseError("$FAIRKITS_MAX_VOXELS", f"{value} is not a positive number of voxels")
    return value


def check_voxels(shape, where: str) -> None:
    """CaseError if a volume of `shape` holds more voxels than the limit (before reading it)."""
    count = 1
    for n in shape:
        count *= int(n)
    limit = max_voxels()
    if count > limit:
        dims = "x".join(str(int(n)) for n in shape)
        raise CaseError(where, f"its header claims {dims} = {count:,} voxels, above the limit of {limit:,} "
                               "(set $FAIRKITS_MAX_VOXELS to raise it); not reading it")


def _read_text(path: Path, where: str) -> str:
    try:
        if path.is_file():
            size = path.stat().st_size
            if size > MAX_TEXT_BYTES:
                raise CaseError(where, f"{size:,} bytes, above the {MAX_TEXT_BYTES:,}-byte limit for a text file")
        with open(path, "rb") as fh:   # a device or pipe (/dev/zero): read no more than the limit
            data = fh.read(MAX_TEXT_BYTES + 1)
    except FileNotFoundError:
        raise CaseError(where, "file not found") from None
    except IsADirectoryError:
        raise CaseError(where, "is a folder, not a file") from None
    except OSError as exc:
        raise CaseError(where, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise CaseError(where, f"more than {MAX_TEXT_BYTES:,} bytes; not a text file this tool reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaseError(where, f"not UTF-8 text (byte {exc.start})") from None


def check_structure(data, where: str):
    """`data` if it nests at most MAX_DEPTH levels and holds at most MAX_NODES values counted as
    if every shared part (a YAML alias) were written out; CaseError otherwise. Each container is
    measured once (memoised by identity), so an alias bomb is sized without being expanded, and
    iteratively, so a deep structure cannot overflow the stack here."""
    measured: dict[int, tuple[int, int]] = {}          # id -> (values inside, counting itself; depth)
    opened: set[int] = set()                            # containers whose children are being measured
    stack = [(data, False)]
    while stack:
        value, children_done = stack.pop()
        if not isinstance(value, (dict, list, tuple)) or id(value) in measured:
            continue
        children = [c for c in (value.values() if isinstance(value, dict) else value)
                    if isinstance(c, (dict, list, tuple))]
        if not children_done:
            if id(value) in opened:
                raise CaseError(where, "refers to itself; refusing to read it")
            opened.add(id(value))
            stack.append((value, True))
            stack.extend((c, False) for c in children if id(c) not in measured)
            continue
        size = 1 + len(value) * (2 if isinstance(value, dict) else 1) - len(children)
        depth = 1
        for c in children:
            size += measured[id(c)][0]
            depth = max(depth, measured[id(c)][1] + 1)
        if depth > MAX_DEPTH:
            raise CaseError(where, f"nests deeper than {MAX_DEPTH} levels; refusing to read it")
        if size > MAX_NODES:
            raise CaseError(where, f"holds more than {MAX_NODES:,} values (aliases expanded); refusing to read it")
        measured[id(value)] = (size, depth)
    return data


def _parsed(load, text: str, where: str, invalid: type, problem) -> object:
    """load(text), its structure bounded; a RecursionError (a nest too deep for the parser) or an
    `invalid` error as one-line CaseErrors naming `where`."""
    try:
        data = load(text)
    except RecursionError:
        raise CaseError(where, f"nests deeper than {MAX_DEPTH} levels; refusing to read it") from None
    except invalid as exc:
        raise CaseError(where, problem(exc)) from None
    return check_structure(data, where)


class DuplicateKey(ValueError):
    """A key written twice in one object: JSON's last-wins would keep one silently."""


def _refuse_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, DuplicateKey):
        return f"the key {short(exc.args[0])} appears twice in one object; which one is meant? (refusing to keep the last)"
    return f"not valid JSON ({exc})"


def parse_json(text: str, where: str):
    """json.loads of `text`, its structure bounded and every object's keys unique (a case id or a
    field given twice is refused, never last-wins); CaseError naming `where` otherwise."""
    return _parsed(lambda t: json.loads(t, object_pairs_hook=_refuse_duplicates), text, where, ValueError,
                   _json_problem)


def read_json(path, where: str | None = None):
    path = Path(path)
    where = where or str(path)
    return parse_json(_read_text(path, where), where)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping key written twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:           # an unhashable key: SafeLoader's own error follows
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"the key {short(key)} appears twice",
                                                        key_node.start_mark)
            seen.add(key) if not isinstance(key, (list, dict)) else None
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str):
    """yaml.safe_load of `text` (a key written twice refused), its structure bounded; CaseError naming
    `where` otherwise."""
    if len(text) > MAX_TEXT_BYTES:
        raise CaseError(where, f"more than {MAX_TEXT_BYTES:,} characters of YAML; refusing to read it")
    return _parsed(lambda t: yaml.load(t, Loader=_UniqueKeyLoader), text, where, yaml.YAMLError,
                   lambda exc: f"not valid YAML ({_yaml_problem(exc)})")


def read_yaml(path, where: str | None = None):
    path = Path(path)
    where = where or str(path)
    return parse_yaml(_read_text(path, where), where)
