"""Docs that cannot drift: every `python SCRIPT …` command line in README.md and docs/*.md parses
with that script's own argument parser (the flags exist, the choices and values are valid), and
every repository path the docs name in backticks exists.

A command is parsed, not run: the script is executed until its parser returns, then stopped.
Commands with an elided part (`…`, `...`) or a placeholder (`<time>`) in a flag's place are left
out; a placeholder in a value is fine (the parsers do not open files)."""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


class Parsed(BaseException):      # not an Exception: the scripts' one-line error handlers let it through
    """Raised once a script's parser has accepted its arguments: nothing else of it runs."""


def command_lines(text: str):
    """(line number, argv) of each `python X.py …` in the page's code blocks, continuations joined."""
    out, in_code, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_code, pending = not in_code, ""
            continue
        if not in_code:
            continue
        body = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if pending:
            body, pending = pending + " " + body.strip(), ""
        elif body.strip():
            start = number
        if body.endswith("\\"):
            pending = body[:-1]
            continue
        match = re.search(r"(?:^|\s)python3? ((?:bench/)?[\w]+\.py)(\s.*)?$", body)
        if match and "…" not in body and "..." not in body:
            try:
                args = shlex.split(match.group(2) or "")
            except ValueError:
                continue
            out.append((start, match.group(1), args))
    return out


COMMANDS = [(page, line, script, args) for page in PAGES for line, script, args in command_lines(page.read_text())]


def test_the_docs_hold_commands_to_check():
    scripts = {script for _, _, script, _ in COMMANDS}
    assert {"train.py", "evaluate.py", "preprocess.py"} <= scripts and len(COMMANDS) >= 30


@pytest.mark.parametrize("page, line, script, args", COMMANDS,
                         ids=[f"{p.name}:{n}" for p, n, _, _ in COMMANDS])
def test_every_documented_command_parses(page, line, script, args, monkeypatch, capsys):
    path = ROOT / script
    assert path.is_file(), f"{page.name}:{line}: {script} does not exist"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(path.parent))      # as `python bench/x.py` puts bench/ first
    try:
        runpy.run_path(str(path), run_name="__main__")
    except Parsed:
        return
    except SystemExit as exc:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{page.name}:{line}: python {script} {shlex.join(args)}: {err[-1] if err else exc}")
    pytest.fail(f"{page.name}:{line}: python {script} ran without parsing its arguments")


def test_every_config_key_a_documented_training_command_sets_exists():
    from config import load_config

    checked = 0
    for page, line, script, args in COMMANDS:
        if script != "train.py" or "--config" not in args:
            continue
        config = args[args.index("--config") + 1]
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        load_config(ROOT / config, sets)      # a ConfigError names the key, the page's line is in the id below
        checked += 1
    assert checked >= 5


PATH = re.compile(r"`((?:configs|docs|bench|fairness|models|data|engine|mitigations|tests)/[\w./-]+)`")


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for name in PATH.findall(line):
                if any(c in name for c in "*<>") or name.startswith("bench/out"):
                    continue
                if not (ROOT / name.rstrip("/.")).exists():
                    missing.append(f"{page.name}:{number}: {name}")
    assert not missing, "\n".join(missing)
