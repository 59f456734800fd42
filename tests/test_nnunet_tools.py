"""Our nnU-Net files checked by nnU-Net's own code (runs only where nnunetv2 is installed, e.g. in a
venv from bench/requirements.txt): verify_dataset_integrity accepts an export; predictions written
the way nnUNetv2_predict writes them are audited by --pred; nnU-Net's summary.json of them gives
the same per-case table through --nnunet-summary; ours is the summary nnU-Net writes.
"""
import json

import numpy as np
import pandas as pd
import pytest

nnunetv2 = pytest.importorskip("nnunetv2")

import evaluate  # noqa: E402
from data.nifti import kits_affine, write_volume  # noqa: E402
from data.nnunet import export_raw_dataset  # noqa: E402
from data.splits import save_split  # noqa: E402
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort  # noqa: E402

SPACING = (4.0, 0.9, 0.9)
FAST = ["--n-boot", "50", "--n-perm", "100", "--no-progress"]


@pytest.fixture()
def exported(tmp_path):
    """Six cases (case_00005 with a KiTS23 cyst, mapped to kidney), split 3 train / 1 val / 2 test."""
    raw = write_tiny_cohort(tmp_path / "raw", n_cases=6, spacing=SPACING)
    _, labels = make_case_arrays()
    labels[9:11, 5:7, 6:8] = 3
    write_volume(raw / "case_00005" / "segmentation.nii.gz", labels, kits_affine(SPACING), spacing=SPACING)
    split = {"options": {}, "train": ["case_00000", "case_00001", "case_00005"], "val": ["case_00002"],
             "test": ["case_00003", "case_00004"]}
    save_split(tmp_path / "splits.json", split)
    result = export_raw_dataset(raw, tmp_path / "nnUNet_raw", dataset_id=501, split_path=tmp_path / "splits.json",
                                label_scheme="kits23-cyst-kidney", progress=False)
    assert not result.failures and result.actions == {"linked": 11, "written": 1}
    return raw, result.dataset_dir


def test_verify_dataset_integrity_accepts_the_export(exported, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    _, dataset = exported
    verify_dataset_integrity(str(dataset), num_processes=1)     # raises on any error
    out = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in out and "Error" not in out and "Warning" not in out


def nnunet_predictions(dataset, out):
    """Label maps as nnUNetv2_predict writes them (SimpleITK, the input image's geometry), with errors:
    case_00000 perfect, case_00001 tumor called kidney, case_00002 one kidney slice missed."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    io = SimpleITKIO()
    for case_id, sub in (("case_00000", "Tr"), ("case_00001", "Tr"), ("case_00002", "Tr"), ("case_00003", "Ts")):
        _, props = io.read_images([str(dataset / f"images{sub}" / f"{case_id}_0000.nii.gz")])
        seg, _ = io.read_seg(str(dataset / f"labels{sub}" / f"{case_id}.nii.gz"))
        seg = seg[0].astype(np.uint8)             # (x, y, z) of SimpleITK's array, as nnU-Net holds it
        if case_id == "case_00001":
            seg[seg == 2] = 1
        if case_id == "case_00002":
            seg[:, :, 3] = 0
        io.write_seg(seg, str(out / f"{case_id}.nii.gz"), props)
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (out / name).write_text("{}")


def test_nnunet_predictions_and_nnunets_summary_give_our_audit(exported, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    raw, dataset = exported
    preds = tmp_path / "preds"
    preds.mkdir()
    nnunet_predictions(dataset, preds)
    refs = tmp_path / "refs"       # the reference label maps in one folder, as nnU-Net's evaluation wants
    refs.mkdir()
    for path in [*(dataset / "labelsTr").iterdir(), *(dataset / "labelsTs").iterdir()]:
        (refs / path.name).hardlink_to(path)
    spec = json.loads((dataset / "dataset.json").read_text())
    regions = LabelManager(spec["labels"], regions_class_order=spec["regions_class_order"]).foreground_regions
    assert regions == [(1, 2), 2]
    compute_metrics_on_folder(str(refs), str(preds), str(tmp_path / "nnunet_summary.json"), SimpleITKIO(), ".nii.gz",
                              regions, num_processes=1)
    group = ["--group", "sex"]
    assert evaluate.main(["--pred", str(preds), "--gt", str(raw), "--cases", "case_00000,case_00001,case_00002,case_00003",
                          "--out", str(tmp_path / "files"), *group, *FAST]) == 0
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "nnunet_summary.json"), "--meta", str(raw / "kits.json"),
                          "--out", str(tmp_path / "nnunet"), *group, *FAST]) == 0
    ours, theirs = (pd.read_csv(tmp_path / d / "per_case.csv") for d in ("files", "nnunet"))
    # the one column a summary cannot give: the tumor count reads the label map's voxels (a discovery
    # feature; the statistics do not use it); everything else is the same table
    assert set(ours.columns) - set(theirs.columns) == {"tumor_count"} and set(theirs.columns) <= set(ours.columns)
    pd.testing.assert_frame_equal(ours.drop(columns="tumor_count"), theirs)
    assert ours.set_index("case_id")["mean"].tolist() == pytest.approx([1, (1 + 0) / 2, (900 / 990 + 1) / 2, 1])
    for name in ("groups_sex.csv", "summary_sex.csv"):
        assert pd.read_csv(tmp_path / "files" / name).equals(pd.read_csv(tmp_path / "nnunet" / name))
    # our summary.json is nnU-Net's, file names apart, and nnU-Net's reader takes it
    mine, nnunet = (json.loads((tmp_path / p).read_text()) for p in ("files/summary.json", "nnunet_summary.json"))
    for s in (mine, nnunet):
        for case in s["metric_per_case"]:
            del case["reference_file"], case["prediction_file"]
    assert mine == nnunet
    loaded = load_summary_json(str(tmp_path / "files" / "summary.json"))
    assert set(loaded["mean"]) == {(1, 2), 2} and loaded["metric_per_case"][0]["metrics"][(1, 2)]["Dice"] == 1.0
