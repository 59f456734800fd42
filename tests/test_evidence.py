"""README's evidence tables are regenerated from the kept per-case tables alone (issue 25): the matrix
bench copies them with --keep, and bench/evidence_report.py computes every statistic from them."""
import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))     # as `python bench/X.py` has it
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)          # as an import has it (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


def per_case(seed: int, shift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [f"case_{i:05d}" for i in range(12)]
    kidney = np.clip(0.8 + shift + rng.normal(0, 0.05, 12), 0, 1)
    tumor = np.clip(0.4 + rng.normal(0, 0.1, 12), 0, 1)
    return pd.DataFrame({"case_id": ids, "sex": ["male"] * 7 + ["female"] * 5, "kidney": kidney, "tumor": tumor,
                         "mean": (kidney + tumor) / 2})


@pytest.fixture
def matrix_folder(tmp_path, monkeypatch):
    """A finished two-method, two-seed matrix on a cohort whose cases 0-2 carry a planted bias and
    cases 7-9 are hidden members."""
    matrix = load_bench(monkeypatch, "fairness_matrix")
    out = tmp_path / "out"
    (out / "raw").mkdir(parents=True)
    kits = [{"case_id": f"case_{i:05d}",
             "synthetic_bias": ({"noise": 3.0} if i < 3 else {"hidden": {"member": True}} if 7 <= i < 10 else None)}
            for i in range(12)]
    (out / "raw" / "kits.json").write_text(json.dumps(kits))
    rows = []
    for seed in (0, 1):
        for method, shift in (("baseline", 0.0), ("resm", 0.05)):
            run = out / "runs" / method / f"seed{seed}"
            (run / "eval" / "twin_twins").mkdir(parents=True)
            (run / "config.yaml").write_text("{}\n")
            per_case(seed, shift).to_csv(run / "eval" / "per_case.csv", index=False)
            per_case(seed + 10, shift).to_csv(run / "eval" / "twin_twins" / "per_case.csv", index=False)
            rows.append(matrix.run_row(method, seed, run, "sex"))
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    args = argparse.Namespace(out=out, keep=tmp_path / "kept", also=[], bias=Path("bias.yaml"))
    matrix.keep_evidence(args, rows)
    return matrix, out, tmp_path / "kept"


def test_kept_tables_hold_every_per_case_table_and_the_planted_cases(matrix_folder):
    _, out, kept = matrix_folder
    for method in ("baseline", "resm"):
        for seed in (0, 1):
            for table in ("eval/per_case.csv", "eval/twin_twins/per_case.csv"):
                path = f"runs/{method}/seed{seed}/{table}"
                assert (kept / path).read_bytes() == (out / path).read_bytes()
    cases = pd.read_csv(kept / "cases.csv").set_index("case_id")
    assert sorted(cases.index[cases["affected"]]) == ["case_00000", "case_00001", "case_00002"]
    assert sorted(cases.index[cases["hidden_member"]]) == ["case_00007", "case_00008", "case_00009"]
    assert not list(kept.rglob("*.pt")) and not (kept / "raw").exists()


def test_evidence_report_computes_the_recipe_delta_from_the_kept_tables(matrix_folder, monkeypatch):
    from fairness.recipe import recipe_delta, recipe_gap

    _, out, kept = matrix_folder
    shutil.rmtree(out)                                   # nothing but the kept tables
    report = load_bench(monkeypatch, "evidence_report")
    runs = report.read_runs(kept)
    frames = report.run_frames(kept, runs)
    assert [len(f) for f in frames.values()] == [2, 2]
    table = report.evidence(kept, runs, "sex", "kidney")
    direct = recipe_delta(frames["baseline"], frames["resm"], "sex", metric="kidney", order=["male", "female"])
    cell = table.loc["RESM", "Δ kidney SD vs baseline"]
    assert cell.startswith(f"{direct['delta_sd']:+.2f} [{direct['delta_sd_lo']:+.2f}, {direct['delta_sd_hi']:+.2f}] "
                           f"p {direct['p_sd']:.3f}")
    gap = recipe_gap(frames["resm"], "sex", metric="kidney", order=["male", "female"])
    assert table.loc["RESM", "kidney gap (recipe)"].startswith(f"{gap['gap']:+.1f} [{gap['lo']:+.1f}, {gap['hi']:+.1f}]")
    assert table.attrs["family"] == 3 and table.attrs["gap_family"] == 2   # Δ kidney SD, Δ SD, Δ mean; two gaps
    # the study form: mean Dice over the two seeds, each the mean of 12 cases
    means = [100 * per_case(s, 0.0)["mean"].mean() for s in (0, 1)]
    assert report.study_form(runs, ["male", "female"]).loc["nnU-Net baseline", "mean"] == \
        f"{np.mean(means):.1f} ± {np.std(means, ddof=1):.1f}"
    assert report.hidden_members(kept) == {"case_00007", "case_00008", "case_00009"}


def test_a_later_command_adds_its_runs_to_the_kept_table(matrix_folder):
    """Another --out (other methods, another seed) kept into the same folder: the earlier runs stay,
    a run trained again replaces its row."""
    matrix, out, kept = matrix_folder
    later = pd.read_csv(out / "runs.csv")
    later = later[later["seed"] == 1].assign(seed=lambda f: f["seed"].where(f["method"] == "resm", 2))
    later.loc[later["method"] == "resm", "mean"] = -1.0
    merged = matrix.merged_runs(kept / "runs.csv", later)
    assert sorted(zip(merged["method"], merged["seed"])) == [("baseline", 0), ("baseline", 1), ("baseline", 2),
                                                             ("resm", 0), ("resm", 1)]
    assert merged.loc[(merged["method"] == "resm") & (merged["seed"] == 1), "mean"].tolist() == [-1.0]
    assert matrix.merged_runs(kept / "absent.csv", later).equals(later)


def test_keep_refuses_a_cohort_from_real_label_maps(monkeypatch, tmp_path):
    matrix = load_bench(monkeypatch, "fairness_matrix")
    with pytest.raises(SystemExit):
        matrix.main(["--raw", str(tmp_path), "--keep", str(tmp_path / "kept"), "--out", str(tmp_path / "out")])


def test_the_repository_holds_every_per_case_table_its_kept_runs_name():
    """docs/evidence.md is regenerated from docs/evidence/ on a clean clone, so every run a kept runs table
    lists has its per-case table committed; a `runs/` ignore rule once swallowed all of them."""
    kept = ROOT / "docs" / "evidence"
    tables = sorted(kept.glob("*/runs*.csv"))
    assert tables, "docs/evidence holds no kept runs table"
    missing = [str((t.parent / "runs" / m / f"seed{s}" / "eval" / "per_case.csv").relative_to(ROOT))
               for t in tables for m, s in pd.read_csv(t)[["method", "seed"]].itertuples(index=False)
               if not (t.parent / "runs" / m / f"seed{s}" / "eval" / "per_case.csv").is_file()]
    assert not missing, f"{len(missing)} kept per-case table(s) absent, e.g. {missing[:3]}"
    if shutil.which("git") and (ROOT / ".git").exists():
        probe = "docs/evidence/matrix_sex/runs/baseline/seed0/eval/per_case.csv"
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0
        assert not ignored, f"{probe} is ignored by .gitignore: the kept tables would never be committed"
