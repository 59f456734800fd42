"""Docs that cannot drift: every `python SCRIPT …` command line in README.md and docs/*.md parses
with that script's own argument parser (the flags exist, the choices and values are valid); every
repository path the docs name in backticks exists, every link between pages resolves, every config
key they name is in the schema, every table of measured figures names the command that prints it,
and README stays a front door (at most 250 lines, linking every page).

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


PATH = re.compile(r"`((?:configs|docs|bench|fairness|models|data|engine|mitigations|audit|tests)/[\w./-]+)`")


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


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_link_between_pages_resolves():
    """A Markdown link from a page (README.md or docs/) to a file resolves from that page's folder."""
    broken = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if target.startswith(("http://", "https://", "#", "mailto:")):
                    continue
                if not (page.parent / target.split("#")[0]).exists():
                    broken.append(f"{page.name}:{number}: {target}")
    assert not broken, "\n".join(broken)


CONFIG_KEY = re.compile(r"`((?:data|model|loss|sampler|optim|train|eval|fairness)\.[a-z_][\w.]*?)(?:[:=][^`]*)?`")


def known_config_key(key: str) -> bool:
    """In the schema (config.DEFAULTS, mitigations' sections included), a network builder's keyword, or
    an old name the config still translates or refuses by name (config.MOVED / REMOVED)."""
    import inspect

    from config import DEFAULTS, MOVED, REMOVED
    from models import MODELS

    if key in MOVED or key in REMOVED:
        return True
    section, *rest = key.split(".")
    if section == "model":
        names = set(DEFAULTS["model"]) | {"moe"}
        for builder in MODELS.values():
            names |= set(inspect.signature(builder).parameters)
        return rest[0] in names
    node = DEFAULTS[section]
    for part in rest:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_config_key_the_docs_name_exists():
    unknown = [f"{page.name}:{number}: {key}" for page in PAGES
               for number, line in enumerate(page.read_text().splitlines(), 1)
               for key in CONFIG_KEY.findall(line)
               if not key.endswith(".py") and not (ROOT / key.split(".")[0] / f"{key.split('.')[1]}.py").exists()
               and not known_config_key(key.rstrip("."))]
    assert not unknown, "\n".join(unknown)


SOURCE = re.compile(r"(?:bench/\w+\.py|python3? (?:train|evaluate|preprocess)\.py|SPEC)")
FIGURE = re.compile(r"\d\.\d")


def figure_tables(text: str):
    """(line number, the section's text up to the table) of each Markdown table holding a measured figure."""
    out, section, table_start, in_code = [], [], None, False
    for number, line in enumerate(text.splitlines() + [""], 1):
        if line.strip().startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("|"):
            if table_start is None:
                table_start, figures = number, False
            figures |= bool(FIGURE.search(re.sub(r"`[^`]*`", "", line)))   # a config value is no figure
        elif table_start is not None:
            if figures:
                out.append((table_start, "\n".join(section)))   # the section so far, the table included
            table_start = None
        if not in_code and re.match(r"#{1,4} ", line):
            section = []
        section.append(line)
    return out


def test_every_measured_table_names_the_command_that_prints_it():
    """A table of measured figures says, in its section, which bench script (or entry command, or SPEC
    reference) prints it; a bench it names exists."""
    unsourced, missing = [], []
    for page in PAGES:
        for number, context in figure_tables(page.read_text()):
            if not SOURCE.search(context):
                unsourced.append(f"{page.name}:{number}")
            missing += [f"{page.name}:{number}: {b}" for b in re.findall(r"bench/\w+\.py", context)
                        if not (ROOT / b).is_file()]
    assert not unsourced, "tables with no command that prints them: " + ", ".join(unsourced)
    assert not missing, "\n".join(missing)


def test_readme_is_a_front_door_that_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {target for target in LINK.findall(readme)}
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not unlinked, f"docs pages README does not link: {unlinked}"
