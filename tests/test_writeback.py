"""Predictions written back to the original geometry: crop undone, resampling undone, NIfTI geometry kept."""
import json

import nibabel as nib
import numpy as np
import pytest

from data.kits import load_case, scan_cohort
from data.labels import LabelScheme
from data.nifti import kits_affine, read_volume, write_volume
from data.preprocessing import PreprocessSettings, body_box, run_preprocessing
from data.cache import load_preprocessed
from data.resample import resample_labels, resampled_shape, separate_axis
from data.writeback import labels_to_probs, to_original_geometry, write_prediction
from fairness import kits_case_dice


def ellipsoid_case(shape=(24, 120, 110)):
    """A kidney ellipsoid holding a tumor sphere, off-centre, inside a CT-like body box."""
    z, y, x = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[((z - 12) / 7) ** 2 + ((y - 55) / 30) ** 2 + ((x - 50) / 22) ** 2 <= 1] = 1
    labels[((z - 13) / 4) ** 2 + ((y - 62) / 13) ** 2 + ((x - 55) / 13) ** 2 <= 1] = 2
    image = np.full(shape, -1000, np.int16)
    image[2:22, 10:115, 5:105] = 40
    image[labels == 1], image[labels == 2] = 200, 100
    return image, labels


@pytest.fixture()
def raw(tmp_path):
    image, labels = ellipsoid_case()
    spacing = (4.0, 0.8, 0.8)  # anisotropic (ratio 5): z goes back by nearest, in-plane linear
    header = nib.Nifti1Header()
    header["descrip"] = b"fairkits round trip"
    for name, array in (("segmentation", labels), ("imaging", image)):
        write_volume(tmp_path / "raw" / "case_00000" / f"{name}.nii.gz", array, kits_affine(spacing),
                     header=header.copy(), spacing=spacing)
    (tmp_path / "raw" / "kits.json").write_text(json.dumps(
        [{"case_id": "case_00000", "gender": "female", "age_at_nephrectomy": 61, "body_mass_index": 24.0}]))
    return tmp_path / "raw"


def test_a_preprocessed_label_map_written_back_matches_the_original(raw, tmp_path):
    # In-plane 0.8 -> 0.9 mm and back; z 4 -> 3.22 mm and back by nearest (the anisotropic rule).
    run_preprocessing(raw, tmp_path / "cache", PreprocessSettings(target_spacing=(3.22, 0.9, 0.9)), progress=False)
    _, seg, props = load_preprocessed(tmp_path / "cache", "case_00000")
    assert props["crop_box"] != [[0, s] for s in props["original_shape"]]  # the crop is really undone
    assert props["separate_axis"] == 0
    labels = to_original_geometry(labels_to_probs(seg), props)
    ref = read_volume(raw / "case_00000" / "segmentation.nii.gz")
    assert labels.shape == ref.array.shape
    dice = kits_case_dice(pred=labels, ref=ref.array)
    assert dice["kidney"] >= 0.99 and dice["tumor"] >= 0.99
    assert not labels[:2].any() and not labels[:, :10].any()  # outside the crop box stays background

    out = write_prediction(tmp_path / "preds" / "case_00000.nii.gz", labels, props, reference=ref)
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.affine, ref.affine)
    assert back.header.get_zooms() == ref.header.get_zooms()
    assert back.header["descrip"].tobytes().rstrip(b"\0") == b"fairkits round trip"
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)


def test_at_the_study_spacing_the_round_trip_costs_only_the_resolution_lost(raw, tmp_path):
    # 0.8 -> 1.62 mm in-plane halves the resolution: the boundary voxels a 1.62 mm grid cannot
    # hold are the ceiling of any model's Dice in the original geometry (about 2 % of kidney Dice).
    run_preprocessing(raw, tmp_path / "cache", PreprocessSettings(), progress=False)
    _, seg, props = load_preprocessed(tmp_path / "cache", "case_00000")
    dice = kits_case_dice(pred=to_original_geometry(labels_to_probs(seg), props), ref=ellipsoid_case()[1])
    assert dice["kidney"] == pytest.approx(0.980, abs=0.002) and dice["tumor"] == pytest.approx(0.965, abs=0.002)


def test_without_a_reference_the_recorded_affine_is_used(raw, tmp_path):
    run_preprocessing(raw, tmp_path / "cache", PreprocessSettings(), progress=False)
    _, seg, props = load_preprocessed(tmp_path / "cache", "case_00000")
    out = write_prediction(tmp_path / "p.nii.gz", to_original_geometry(labels_to_probs(seg), props), props)
    np.testing.assert_allclose(nib.load(str(out)).affine, kits_affine((4.0, 0.8, 0.8)))


def test_argmax_after_resampling_keeps_the_most_probable_class():
    props = {"case_id": "c", "resampled_shape": [4, 6, 6], "cropped_shape": [4, 6, 6], "original_shape": [6, 8, 8],
             "crop_box": [[1, 5], [1, 7], [2, 8]], "spacing": [1, 1, 1], "original_spacing": [1, 1, 1]}
    probs = np.zeros((3, 4, 6, 6), np.float32)
    probs[0] = 0.5
    probs[1, :2], probs[2, 2:] = 0.6, 0.7
    probs[1, 3, 0, 0] = probs[2, 3, 0, 0] = 0.5  # a three-way tie: the lower class, like argmax
    labels = to_original_geometry(probs, props)
    inner = labels[1:5, 1:7, 2:8]
    assert (inner[:2] == 1).all() and (inner[2:3] == 2).all() and inner[3, 0, 0] == 0
    assert labels.sum() == inner.sum()


@pytest.mark.parametrize("spacing, original_spacing", [
    ((1.0, 1.0, 1.0), (0.6, 0.7, 0.8)),      # isotropic: linear on every axis
    ((3.22, 1.62, 1.62), (5.0, 0.8, 0.8)),   # anisotropic z: nearest along z
    ((1.5, 1.5, 2.0), (0.8, 0.8, 4.0)),      # anisotropic x: slabs are ranges of x
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),      # same grid
])
@pytest.mark.parametrize("slab_voxels", [1, None])
def test_slab_by_slab_write_back_equals_the_whole_volume_argmax(monkeypatch, spacing, original_spacing, slab_voxels):
    """The write-back (slab by slab) gives the labels of the whole-volume way it replaced: every
    class resampled to the cropped shape with resample_image, argmax (ties: the lower class),
    pasted at the crop box."""
    import functools

    import data.writeback as writeback
    from data.resample import resample_image, resample_image_slabs

    if slab_voxels is not None:  # one output slice per slab
        monkeypatch.setattr(writeback, "resample_image_slabs",
                            functools.partial(resample_image_slabs, slab_voxels=slab_voxels))
    rng = np.random.default_rng(7)
    cropped = (9, 11, 10) if spacing != original_spacing else (6, 8, 7)
    props = {"case_id": "c", "resampled_shape": [6, 8, 7], "cropped_shape": list(cropped),
             "original_shape": [12, 15, 13], "crop_box": [[2, 2 + cropped[0]], [1, 1 + cropped[1]], [3, 3 + cropped[2]]],
             "spacing": list(spacing), "original_spacing": list(original_spacing)}
    logits = rng.normal(size=(3, 6, 8, 7)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    probs[2, :, :4] = probs[1, :, :4]  # exact ties between kidney and tumor: kidney must win
    labels = to_original_geometry(probs, props)

    whole = resample_image(probs, spacing, original_spacing, new_shape=cropped, order=1, order_z=0)
    expected = np.zeros(props["original_shape"], np.uint8)
    expected[tuple(slice(a, b) for a, b in props["crop_box"])] = np.argmax(whole, axis=0)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    tied = (whole[1] == whole[2]) & (whole[1] > whole[0])
    assert tied.any() and not (labels[tuple(slice(a, b) for a, b in props["crop_box"])][tied] == 2).any()


def test_a_prediction_of_the_wrong_shape_names_the_case():
    props = {"case_id": "case_00007", "resampled_shape": [4, 6, 6]}
    with pytest.raises(Exception, match="case_00007.*does not match"):
        to_original_geometry(np.zeros((3, 4, 6, 5), np.float32), props)


def test_real_kits19_label_maps_survive_the_round_trip(kits19_dir):
    """case_00010 is anisotropic (3 mm slices), case_00002 is not (1 mm): both ways back."""
    settings = PreprocessSettings()
    cohort = scan_cohort(kits19_dir, cases=["case_00002", "case_00010"])
    for record in cohort.records:
        case = load_case(record, LabelScheme.parse("kits19"), with_image=False)
        box = body_box(None, case.labels, settings.body_threshold_hu)
        cropped = case.labels[tuple(slice(a, b) for a, b in box)]
        new_shape = resampled_shape(cropped.shape, case.spacing, settings.target_spacing)
        seg = resample_labels(cropped, case.spacing, settings.target_spacing, new_shape=new_shape, classes=(1, 2))
        props = {"case_id": record.case_id, "resampled_shape": list(new_shape), "cropped_shape": list(cropped.shape),
                 "original_shape": list(case.shape), "crop_box": [list(b) for b in box],
                 "spacing": list(settings.target_spacing), "original_spacing": list(case.spacing),
                 "separate_axis": separate_axis(case.spacing, settings.target_spacing)}
        dice = kits_case_dice(pred=to_original_geometry(labels_to_probs(seg), props), ref=case.labels)
        assert dice["kidney"] >= 0.975 and dice["tumor"] >= 0.95, (record.case_id, dice)  # measured .984/.967, .979/.955
