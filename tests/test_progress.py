"""Progress displays: a tqdm bar on a terminal, plain periodic lines elsewhere (SLURM logs), one home."""
import ast
import io
import re
from pathlib import Path

from data.preprocessing import PreprocessSettings, run_preprocessing
from data.progress import PlainProgress, track
from tests.kits_fixtures import write_tiny_cohort

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_one_line_per_tenth_and_no_carriage_return():
    out = io.StringIO()
    assert list(track(range(20), desc="preprocess", stream=out)) == list(range(20))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # 20 items: a line each time another tenth is done (2, 4, ..., 20), the last with the total time
    assert [re.match(r"preprocess: (\d+)/20 cases", line).group(1) for line in lines] == [str(n) for n in range(2, 21, 2)]
    assert re.fullmatch(r"preprocess: 10/20 cases \(50 %\), \d:\d\d elapsed, ~\d:\d\d left", lines[4])
    assert re.fullmatch(r"preprocess: 20/20 cases \(100 %\) in \d:\d\d", lines[-1])


def test_lines_also_come_every_minute_with_elapsed_and_remaining_time():
    now = [0.0]
    out = io.StringIO()
    bar = PlainProgress(total=1000, desc="evaluate", unit="case", stream=out, every_s=60.0, clock=lambda: now[0])
    for t, postfix in ((30.0, "case_00001"), (61.0, "case_00002"), (100.0, "case_00003")):
        now[0] = t
        bar.set_postfix_str(postfix)
        bar.update(1)
    now[0] = 125.0
    bar.close()
    # at 61 s: 2 of 1000 done, so 998 left at 30.5 s each = 30439 s = 8:27:19; no line at 30 s or
    # 100 s (under a minute since the last, and not a tenth); close() says where it stopped
    assert out.getvalue().splitlines() == [
        "evaluate: 2/1000 cases (0 %), 1:01 elapsed, ~8:27:19 left (case_00002)",
        "evaluate: 3/1000 cases (0 %) in 2:05 (case_00003)",
    ]


def test_a_terminal_gets_the_tqdm_bar_and_disabled_prints_nothing():
    tty = Terminal()
    for _ in track(range(3), desc="x", stream=tty):
        pass
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    quiet = io.StringIO()
    bar = track(total=5, desc="x", stream=quiet, enabled=False)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert quiet.getvalue() == ""


def test_preprocessing_into_a_log_file_prints_plain_lines(tmp_path, capsys):
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=4, spacing=(3.22, 1.62, 1.62))
    run_preprocessing(raw, tmp_path / "cache", PreprocessSettings(), progress=True)
    err = capsys.readouterr().err        # pytest's capture is a file, as a SLURM log is
    assert "\r" not in err
    clock = r"\d:\d\d"   # minutes:seconds
    want = [rf"preprocess: {n}/4 cases \({25 * n} %\), {clock} elapsed, ~{clock} left \(case_0000{n - 1}\)"
            for n in (1, 2, 3)] + [rf"preprocess: 4/4 cases \(100 %\) in {clock}"]
    lines = err.splitlines()
    assert len(lines) == 4 and all(re.fullmatch(w, line) for w, line in zip(want, lines)), lines


def imports(path: Path) -> set:
    tree = ast.parse(path.read_text())
    return {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | \
        {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_no_module_but_data_progress_draws_progress_bars():
    users = [p.relative_to(ROOT).as_posix() for p in sorted(ROOT.glob("**/*.py"))
             if p.parent.name != "tests" and ".git" not in p.parts and "tqdm" in imports(p)]
    assert users == ["data/progress.py"]
