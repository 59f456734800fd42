"""evaluate.py --ckpt / --compare end to end on a tiny trained model: files, geometry, agreement."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
import train
from tests.kits_fixtures import write_tiny_cohort
from tests.test_training import tiny_args

SPACING = (4.0, 1.2, 1.2)  # not the target spacing: predictions really go back through the resampler


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalckpt")
    write_tiny_cohort(root / "raw", n_cases=8, shape=(16, 48, 48), spacing=SPACING)
    assert train.main(tiny_args(root, "pair", epochs=1, extra=["data.test=4"]) + ["--seeds", "0", "1"]) == 0
    return root


def test_ckpt_predicts_the_test_split_in_the_original_geometry(runs, capsys):
    run = runs / "runs" / "pair" / "seed0"
    assert evaluate.main(["--ckpt", str(run / "last.pt"), "--group", "sex", "age", "--n-boot", "200",
                          "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = run / "eval" / "last"
    per_case = pd.read_csv(ev / "per_case.csv")
    test_ids = pd.read_json(runs / "cache" / "splits.json", typ="series")["test"]
    assert sorted(per_case["case_id"]) == sorted(test_ids) and (per_case["geometry"] == "original").all()
    for case_id in per_case["case_id"]:
        pred = nib.load(str(ev / "predictions" / f"{case_id}.nii.gz"))
        ref = nib.load(str(runs / "raw" / case_id / "segmentation.nii.gz"))
        assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
    for attr in ("sex", "age"):
        groups = pd.read_csv(ev / f"groups_{attr}.csv", index_col=0).dropna(subset=["mean"])
        assert {"n", "mean", "mean_lo", "mean_hi", "cvar20"} <= set(groups.columns)
        several, single = groups[groups["n"] >= 2], groups[groups["n"] == 1]
        assert (several["mean_lo"] <= several["mean"] + 1e-12).all() and (several["mean"] <= several["mean_hi"] + 1e-12).all()
        assert single[["mean_lo", "mean_hi"]].isna().all().all()   # one case: no interval, not a zero-width one
        summary = pd.read_csv(ev / f"summary_{attr}.csv", index_col=0)
        assert {"sd", "ser", "es_dice", "sd_p", "ser_p", "gap_p", "sd_null95", "gap_null95", "mdg80", "gap_adjusted",
                "gap_adjusted_lo", "gap_adjusted_hi"} <= set(summary.index)
        assert 0 < summary.loc["gap_p", "value"] <= 1
        for suffix in ("md", "tex", "png"):
            assert (ev / f"{'box' if suffix == 'png' else 'report'}_{attr}.{suffix}").stat().st_size > 0
    assert "Mann-Whitney U" in out and "Kruskal-Wallis" in out and "95% intervals: group means bootstrap-t" in out
    assert "noise alone gives up to" in out and "detectable:" in out
    assert any(p.name.startswith("events.out.tfevents") for p in ev.iterdir())


def test_external_audit_of_the_same_predictions_gives_the_same_numbers(runs, tmp_path, capsys):
    run = runs / "runs" / "pair" / "seed0"
    if not (run / "eval" / "last" / "per_case.csv").is_file():
        evaluate.main(["--ckpt", str(run / "last.pt"), "--n-boot", "50", "--no-progress"])
    test_ids = pd.read_csv(run / "eval" / "last" / "per_case.csv")["case_id"]
    assert evaluate.main(["--pred", str(run / "eval" / "last" / "predictions"), "--gt", str(runs / "raw"),
                          "--cases", ",".join(test_ids), "--group", "sex", "--out", str(tmp_path / "ext"), "--n-boot", "50", "--no-progress"]) == 0
    a = pd.read_csv(run / "eval" / "last" / "per_case.csv").set_index("case_id").sort_index()
    b = pd.read_csv(tmp_path / "ext" / "per_case.csv").set_index("case_id").sort_index()
    pd.testing.assert_frame_equal(a[["kidney", "tumor", "mean", "sex"]], b[["kidney", "tumor", "mean", "sex"]])


def test_results_are_kept_and_an_interrupted_evaluation_continues(runs, capsys):
    run = runs / "runs" / "pair" / "seed1"
    args = ["--ckpt", str(run / "last.pt"), "--n-boot", "50", "--no-progress"]
    assert evaluate.main(args) == 0
    first = pd.read_csv(run / "eval" / "last" / "per_case.csv")
    assert evaluate.main(args) == 2
    assert "holds results (per_case.csv); pass --overwrite" in capsys.readouterr().err
    (run / "eval" / "last" / "per_case.csv").unlink()  # as if killed before the end
    assert evaluate.main(args) == 0
    assert f"kept {len(first)} prediction(s)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(first, pd.read_csv(run / "eval" / "last" / "per_case.csv"))


def test_several_seeds_are_aggregated_per_seed_then_averaged(runs, tmp_path, capsys):
    ckpts = [str(runs / "runs" / "pair" / f"seed{s}" / "last.pt") for s in (0, 1)]
    assert evaluate.main(["--ckpt", *ckpts, "--group", "sex", "--out", str(tmp_path / "agg"), "--n-boot", "50",
                          "--no-progress"]) == 0
    out = capsys.readouterr().out
    agg = pd.read_csv(tmp_path / "agg" / "seeds_sex.csv", index_col=0)
    sds = [pd.read_csv(tmp_path / "agg" / d / "summary_sex.csv", index_col=0).loc["sd", "value"]
           for d in sorted(p.name for p in (tmp_path / "agg").iterdir() if p.is_dir())]
    assert len(sds) == 2
    assert agg.loc["sd", "mean"] == pytest.approx(np.mean(sds)) and agg.loc["sd", "std"] == pytest.approx(np.std(sds, ddof=1))
    assert agg.loc["sd", "n"] == 2 and "mean ± std over 2 seeds" in out


def test_compare_puts_methods_side_by_side_with_the_pareto_front(runs, tmp_path, capsys):
    assert evaluate.main(["--compare", str(runs / "runs" / "pair"), str(runs / "runs" / "pair" / "seed0"),
                          "--group", "sex", "--out", str(tmp_path / "cmp"), "--source", "train"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", index_col=0)
    assert list(table.index) == ["pair", "seed0"] and list(table["seeds"]) == [2, 1]
    assert table["pareto_sd_sex"].any()
    seed0 = pd.read_csv(runs / "runs" / "pair" / "seed0" / "eval" / "per_case.csv")
    assert table.loc["seed0", "mean"] == pytest.approx(100 * seed0["mean"].mean())
    assert (tmp_path / "cmp" / "tradeoff_sex.png").stat().st_size > 0
    assert "| method |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert r"\begin{tabular}" in (tmp_path / "cmp" / "compare.tex").read_text()


def test_compare_counts_symlinked_seed_folders_once_each(runs, tmp_path, capsys):
    """A batch assembled from links to seed folders is a batch: every linked seed counts, a link
    back up the tree is not walked forever, and two links to one run count it once."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for seed in ("seed0", "seed1"):
        (linked / seed).symlink_to(runs / "runs" / "pair" / seed, target_is_directory=True)
    (linked / "again").symlink_to(runs / "runs" / "pair" / "seed1", target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    assert evaluate.main(["--compare", str(linked), "--group", "sex", "--out", str(tmp_path / "cmp"),
                          "--source", "train"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", index_col=0)
    assert list(table["seeds"]) == [2]


def test_compare_against_a_baseline_gives_paired_deltas_and_refuses_other_case_sets(runs, tmp_path, capsys):
    pair = runs / "runs" / "pair"
    # the same runs under two method names: every paired delta is exactly 0, p 1
    twin = tmp_path / "twin"
    import shutil
    shutil.copytree(pair, twin)
    assert evaluate.main(["--compare", str(pair), str(twin), "--baseline", "pair", "--group", "sex",
                          "--out", str(tmp_path / "cmp"), "--source", "train", "--n-boot", "200"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv", index_col=0)
    for column in ("delta_mean", "delta_sd", "delta_ser", "delta_worst", "delta_gap", "model_delta_mean_sex",
                   "model_delta_mean_lo_sex", "model_delta_mean_hi_sex"):
        assert table.loc["twin", column] == 0.0
    assert table.loc["twin", "model_p_mean_holm_sex"] == 1.0 and "delta_sd_sex" in table.columns
    # two seeds a side, the same runs on both: the recipe-level Δ is 0 with p 1
    assert table.loc["twin", "question"] == "recipe" and table.loc["twin", "p_mean_sex"] == pytest.approx(1.0)
    # the test split has one female case: SD, SER and worst get no model-level interval and no p from it
    assert table.loc["twin", ["model_delta_sd_lo_sex", "model_delta_sd_hi_sex", "model_p_sd_sex"]].isna().all()
    assert "THIS RECIPE against pair's, by sex: the seeds are the sample" in capsys.readouterr().out
    page = (tmp_path / "cmp" / "report.html").read_text()       # the comparison as a page
    assert "id='compare'" in page and "This recipe against the baseline" in page and "tradeoff sex" in page
    assert "No difference from the baseline is beyond noise after Holm." in page
    # a method scored on other cases cannot be paired
    other = pd.read_csv(twin / "seed0" / "eval" / "per_case.csv")
    other["case_id"] = other["case_id"] + "_x"
    other.to_csv(twin / "seed0" / "eval" / "per_case.csv", index=False)
    assert evaluate.main(["--compare", str(pair), str(twin), "--baseline", "pair", "--group", "sex",
                          "--out", str(tmp_path / "cmp2"), "--source", "train", "--n-boot", "50"]) == 2
    assert "was scored on other cases than" in capsys.readouterr().err


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(runs, tmp_path, capsys):
    ckpt = torch.load(runs / "runs" / "pair" / "seed0" / "last.pt", weights_only=False)
    ckpt["config"]["model"]["max_features"] = 32
    torch.save(ckpt, tmp_path / "odd.pt")
    assert evaluate.main(["--ckpt", str(tmp_path / "odd.pt"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "odd.pt: weights do not fit the nnunet its config describes" in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_from_an_older_config_is_refused_in_one_line(runs, tmp_path, capsys):
    ckpt = torch.load(runs / "runs" / "pair" / "seed0" / "last.pt", weights_only=False)
    ckpt["config"]["train"]["warmup_epochs"] = 5  # a key this version does not know
    torch.save(ckpt, tmp_path / "old.pt")
    assert evaluate.main(["--ckpt", str(tmp_path / "old.pt"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'old.pt'}: its saved config does not fit this version")
    assert "warmup_epochs" in err and len(err.splitlines()) == 1


def test_a_damaged_cache_case_is_listed_and_the_others_are_scored(runs, tmp_path, capsys):
    run = runs / "runs" / "pair" / "seed0"
    test_ids = sorted(pd.read_json(runs / "cache" / "splits.json", typ="series")["test"])
    victim = runs / "cache" / f"{test_ids[0]}.npy"
    saved = victim.read_bytes()
    try:
        victim.write_bytes(saved[: len(saved) // 2])
        assert evaluate.main(["--ckpt", str(run / "last.pt"), "--out", str(tmp_path / "ev"), "--n-boot", "50",
                              "--no-progress"]) == 1                 # tables of the rest; exit 1 says one failed
        captured = capsys.readouterr()
        per_case = pd.read_csv(tmp_path / "ev" / "per_case.csv")
        assert sorted(per_case["case_id"]) == test_ids[1:]
        assert f"{test_ids[0]}: " in captured.err and f"{test_ids[0]}.npy is damaged" in captured.err
        assert "Traceback" not in captured.err

        from engine.scoring import CaseScorer, WindowOptions           # training's validation path
        scorer = CaseScorer(torch.nn.Conv3d(1, 3, 1), runs / "cache", WindowOptions(patch_size=(8, 16, 16)))
        rows, _ = scorer.score_many(test_ids)
        assert [r["case_id"] for r in rows] == test_ids[1:] and [f.where for f in scorer.failures] == test_ids[:1]
    finally:
        victim.write_bytes(saved)


def test_discover_with_a_checkpoint_saves_the_models_pooled_bottleneck(runs, tmp_path, capsys):
    run = runs / "runs" / "pair" / "seed0"
    out = tmp_path / "disc"
    assert evaluate.main(["--ckpt", str(run / "last.pt"), "--out", str(out), "--discover", "--features",
                          "derived,embedding", "--n-boot", "20", "--n-perm", "100", "--no-progress"]) == 0
    assert "discovery: no failing subgroup confirmed" in capsys.readouterr().out   # 4 cases: not searched
    vectors = pd.read_csv(out / "embeddings.csv", index_col="case_id")
    per_case = pd.read_csv(out / "per_case.csv")
    assert sorted(vectors.index) == sorted(per_case["case_id"])
    assert vectors.shape[1] == 16 and np.isfinite(vectors.to_numpy()).all()   # model.max_features: the bottleneck
    # the same vector from the library calls a notebook would make
    from data.cache import load_preprocessed
    from models.checkpoint import load_checkpoint, model_from_checkpoint
    from models.embedding import case_embedding
    ckpt = load_checkpoint(run / "last.pt")
    net = model_from_checkpoint(ckpt, where="last.pt")
    case_id = vectors.index[0]
    image, _, _ = load_preprocessed(runs / "cache", case_id)
    again = case_embedding(net, image, patch_size=ckpt["config"]["train"]["patch_size"])
    assert np.allclose(again, vectors.loc[case_id].to_numpy(), rtol=1e-4, atol=1e-5)


def test_predictions_are_reused_only_when_this_checkpoint_and_these_settings_made_them(runs, tmp_path, capsys):
    """Issue 43: --overwrite reused an earlier evaluation's maps, whatever made them (a map replaced by
    the reference scored Dice 1.0 under --mirror --overwrite)."""
    import shutil

    run = runs / "runs" / "pair" / "seed0"
    out = tmp_path / "ev"
    base = ["--ckpt", str(run / "last.pt"), "--out", str(out), "--n-boot", "50", "--n-perm", "200", "--no-progress"]
    assert evaluate.main(base + ["--no-mirror"]) == 0
    first = pd.read_csv(out / "per_case.csv").set_index("case_id")
    victim = first.index[0]
    shutil.copyfile(runs / "raw" / victim / "segmentation.nii.gz", out / "predictions" / f"{victim}.nii.gz")
    assert evaluate.main(base + ["--mirror", "--overwrite"]) == 0
    again = pd.read_csv(out / "per_case.csv").set_index("case_id")
    assert "kept" not in capsys.readouterr().out and again.loc[victim, "mean"] < 0.99   # predicted again, not reused
    (out / "per_case.csv").unlink()                                  # an interrupted evaluation ...
    assert evaluate.main(base + ["--no-mirror"]) == 2                # ... is not continued with other settings
    err = capsys.readouterr().err
    assert "holds" in err and "of another checkpoint or other settings (mirror differ)" in err and "--overwrite" in err
    assert evaluate.main(base + ["--mirror"]) == 0                   # with its own, it is
    assert "kept" in capsys.readouterr().out
    other = tmp_path / "other.pt"
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    (out / "per_case.csv").unlink()
    shutil.copyfile(other, run / "other.pt")
    assert evaluate.main(["--ckpt", str(run / "other.pt"), *base[2:], "--mirror"]) == 2
    assert "checkpoint_sha256 differ" in capsys.readouterr().err
    (run / "other.pt").unlink()
