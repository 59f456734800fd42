"""Known-bias cohorts (data/bias.py, the generators in data/synthetic.py, configs/bias/).

Each mechanism is checked for doing what it says, on small procedural grids (a from-labels
source folder is made from procedural label maps, so nothing here needs ../shared/kits19):
noise measured in a homogeneous region scales by the factor; slice_mm sets header spacing,
shape and the preprocessed shape; tumor_scale scales tumor volume; share and hidden give exact
counts; twins differ only where the mechanism acts; the none preset is the unbiased cohort byte
for byte; generation is seeded; bad files give one-line errors naming the key.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data.bias import BiasSpec, BiasSpecError, CaseEffect, describe_bias, load_bias, parse_bias
from data.errors import CaseError
from data.kits import scan_cohort
from data.nifti import kits_affine, read_volume, write_volume
from data.synthetic import (SYNTHESIS_FILE, jitter_labels, plan_procedural_case, resample_z_nearest, scale_tumor,
                            synthesize_ct, twins_dir, write_cohort_from_labels, write_procedural_cohort)
from tests.test_synthetic import best_band_dice

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "bias"
TINY = (16, 32, 32)
MID = (32, 64, 64)
FILES = ("imaging.nii.gz", "segmentation.nii.gz")


def spec(data) -> BiasSpec:
    return parse_bias(data, "test.yaml")


def load(path: Path) -> np.ndarray:
    return np.asarray(read_volume(path).array)


def kits(folder: Path) -> dict:
    return {m["case_id"]: m for m in json.loads((folder / "kits.json").read_text())}


def fat_mask(noise_free: np.ndarray) -> np.ndarray:
    """Homogeneous region: fat (-150..-50 HU in the noise-free image), eroded in-plane."""
    return ndimage.binary_erosion((noise_free > -150) & (noise_free < -50), np.ones((1, 3, 3), bool))


def flat_noise(img: np.ndarray, noise_free: np.ndarray) -> tuple[float, int]:
    """Noise std from differences of x-neighbours in fat where the noise-free image is flat
    (neighbours within 1 HU): what is left is noise. Returns (std, number of pairs)."""
    fat = fat_mask(noise_free)
    flat = fat[..., :-1] & fat[..., 1:] & (np.abs(noise_free[..., :-1].astype(float) - noise_free[..., 1:]) <= 1)
    d = (img[..., :-1].astype(np.float64) - img[..., 1:])[flat]
    return float(d.std() / np.sqrt(2.0)), int(flat.sum())


# ---------------------------------------------------------------------------------------------
# the specification
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, key", [
    ({"sex": {"female": {"nosie": 2}}}, "sex.female.nosie"),
    ({"sex": {"female": {"noise": -1}}}, "sex.female.noise"),
    ({"sex": {"female": {"noise": "high"}}}, "sex.female.noise"),
    ({"sex": {"woman": {"noise": 2}}}, "sex.woman"),
    ({"age": {">=75": {"slice_mm": 5}}}, "age.>=75"),
    ({"sex": {"female": {"label_noise": 1.5}}}, "sex.female.label_noise"),
    ({"sex": {"female": {"hidden": {"noise": 3}}}}, "sex.female.hidden.fraction"),
    ({"sex": {"female": {"hidden": {"fraction": 0.3, "label_noise": 2}}}}, "sex.female.hidden.label_noise"),
    ({"sex": {"female": {"hidden": {"fraction": 0.3}}}}, "sex.female.hidden"),
    ({"sex": {"female": {"share": 1.5}}}, "sex.female.share"),
    ({"sex": {"female": {"share": 0.3}}, "age": {">=70": {"share": 0.2}}}, "share"),
    ({"sex": {"female": {"share": 0.3}, "male": {"share": 0.3}}}, "sex"),
    ({"sex": {"female": {}}}, "sex.female"),
    ({"age:x": {"1": {"noise": 2}}}, "age:x"),
    (["noise"], "mapping"),
])
def test_bad_specs_name_the_key(data, key):
    with pytest.raises(BiasSpecError) as err:
        spec(data)
    msg = str(err.value)
    assert msg.startswith("test.yaml: ") and key in msg and "\n" not in msg


def test_bad_file_is_one_line_error_exit_2(tmp_path, capsys):
    import preprocess
    bad = tmp_path / "typo.yaml"
    bad.write_text("sex:\n  female: {nosie: 2.5}\n")
    with pytest.raises(BiasSpecError, match=r"typo\.yaml: sex\.female\.nosie: unknown mechanism"):
        load_bias(bad)
    code = preprocess.main(["synthesize", "--out", str(tmp_path / "o"), "--cases", "1", "--bias", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "sex.female.nosie" in err and len(err.splitlines()) == 1
    (tmp_path / "broken.yaml").write_text("sex: [female\n")
    with pytest.raises(BiasSpecError, match="not valid YAML"):
        load_bias(tmp_path / "broken.yaml")
    with pytest.raises(BiasSpecError, match="cannot read"):
        load_bias(tmp_path / "missing.yaml")


def test_presets_parse_and_plant_what_they_say():
    presets = {p.stem: load_bias(p) for p in PRESETS.glob("*.yaml")}
    assert presets["none"].is_empty
    want = {"low_dose_female": "noise", "thick_slices_elderly": "slice_mm", "small_tumors_young": "tumor_scale",
            "hidden_female": "hidden", "low_contrast_elderly": "contrast", "motion_blur_elderly": "blur",
            "noisy_labels_male": "label_noise", "few_female": "share", "poor_protocol_female": "contrast",
            "small_tumors_female": "tumor_scale", "noisy_labels_male_k2": "label_noise",
            "protocol_shift_female": "hidden", "hidden_small_tumors_female": "tumor_scale"}
    for name, mech in want.items():
        text = (PRESETS / f"{name}.yaml").read_text()
        assert text.startswith("#") and "measured" in text.lower(), name     # header: what, why, measured
        assert mech in json.dumps(presets[name].normalised), name


def test_combination_rules_and_records():
    s = spec({"sex": {"female": {"noise": 2.0, "blur": 3.0, "slice_mm": 5}},
              "age": {">=70": {"noise": 1.5, "blur": 4.0, "slice_mm": 3, "label_noise": 2}}})
    metas = {"a": {"gender": "female", "age_at_nephrectomy": 75}, "b": {"gender": "male", "age_at_nephrectomy": 40},
             "c": {"gender": "female", "age_at_nephrectomy": 40}, "d": {"gender": "male"}}
    effects, failures = s.resolve(metas, seed=0)
    assert effects["a"].record == {"noise": 3.0, "slice_mm": 5.0, "blur": 5.0, "label_noise": 2}
    assert effects["b"].record == {} and not effects["b"].acts
    assert effects["c"].record == {"noise": 2.0, "slice_mm": 5.0, "blur": 3.0}
    assert [f.where for f in failures] == ["d"] and "age_at_nephrectomy" in failures[0].problem


# ---------------------------------------------------------------------------------------------
# share and hidden: exact counts
# ---------------------------------------------------------------------------------------------
def _metas(n_f: int, n_m: int) -> dict:
    out = {f"case_{i:05d}": {"gender": "female", "age_at_nephrectomy": 30 + i} for i in range(n_f)}
    out.update({f"case_{n_f + i:05d}": {"gender": "male", "age_at_nephrectomy": 30 + i} for i in range(n_m)})
    return out


@pytest.mark.parametrize("n", [5, 7, 10, 13, 24])
def test_hidden_fraction_is_exact_and_seeded(n):
    s = spec({"sex": {"female": {"noise": 1.5, "hidden": {"fraction": 0.3, "noise": 2, "slice_mm": 8}}}})
    metas = _metas(n, 4)
    effects, _ = s.resolve(metas, seed=0)
    members = sorted(c for c, e in effects.items() if e.hidden and e.hidden["member"])
    assert len(members) == int(np.floor(0.3 * n + 0.5))
    for cid, e in effects.items():
        if metas[cid]["gender"] == "male":
            assert e.record == {}
        elif cid in members:
            assert e.record["noise"] == 3.0 and e.record["slice_mm"] == 8.0 and e.record["hidden"]["member"]
        else:
            assert e.record == {"noise": 1.5, "hidden": {"group": "sex=female", "fraction": 0.3, "member": False}}
    again, _ = s.resolve(metas, seed=0)
    assert again == effects
    others = {tuple(sorted(c for c, e in s.resolve(metas, seed=k)[0].items() if e.hidden and e.hidden["member"]))
              for k in range(6)}
    assert len(others) > 1 or len(members) in (0, n)       # the seed chooses the members


def test_a_hidden_case_mix_scales_only_the_members_tumors():
    s = spec({"sex": {"female": {"hidden": {"fraction": 0.5, "tumor_scale": 0.1}}}})
    metas = _metas(10, 4)
    effects, _ = s.resolve(metas, seed=3)
    members = [c for c, e in effects.items() if e.hidden and e.hidden["member"]]
    assert len(members) == 5
    for cid, e in effects.items():
        assert e.tumor_scale == (0.1 if cid in members else 1.0)
        assert e.acts == (cid in members)                     # only members get a twin
    assert describe_bias(s.normalised) == "sex female: a hidden 50% of them with tumor volume x0.1"


def test_share_quotas_and_from_labels_selection():
    s = spec({"sex": {"female": {"share": 0.2}}})
    for n, want in ((10, 2), (12, 2), (13, 3), (24, 5), (5, 1)):
        assert s.quotas(n) == {"female": want, "other": n - want}      # floor(0.2 n + 0.5)
    three = spec({"age": {"[0,50)": {"share": 0.25}, ">=70": {"share": 0.25}}})
    q = three.quotas(10)
    assert sum(q.values()) == 10 and sorted(q.values()) == [2, 3, 5]     # largest remainder
    # from-labels: the largest sub-cohort with exactly that share, members chosen by seed
    metas = _metas(9, 12)
    kept, failures = s.select_fixed(metas, seed=0)
    female = [c for c in kept if metas[c]["gender"] == "female"]
    assert failures == [] and len(kept) == 15 and len(female) == 3        # 12 men + 3 women: 3/15
    assert kept == s.select_fixed(metas, seed=0)[0] != s.select_fixed(metas, seed=1)[0]
    kept, _ = spec({"sex": {"female": {"share": 0.75}}}).select_fixed(metas, seed=0)
    assert len(kept) == 12 and sum(metas[c]["gender"] == "female" for c in kept) == 9


def test_procedural_share_is_exact(tmp_path):
    s = spec({"sex": {"female": {"share": 0.3}}})
    ids = write_procedural_cohort(tmp_path / "b", n_cases=10, seed=0, shape=TINY, progress=False, bias=s)
    meta = kits(tmp_path / "b")
    assert sorted(meta) == ids and len(ids) == 10
    assert sum(m["gender"] == "female" for m in meta.values()) == 3
    assert all(m["synthetic_bias"] == ({"share": 0.3} if m["gender"] == "female" else {}) for m in meta.values())
    assert [int(c[5:]) for c in ids] != list(range(10))                 # some indices skipped
    # a kept case is the same patient as without the spec (same seed and index)
    plain = write_procedural_cohort(tmp_path / "p", n_cases=int(ids[-1][5:]) + 1, seed=0, shape=TINY, progress=False)
    for cid in ids:
        assert cid in plain
        for name in FILES:
            assert (tmp_path / "b" / cid / name).read_bytes() == (tmp_path / "p" / cid / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# the null cohort, determinism, provenance
# ---------------------------------------------------------------------------------------------
def test_none_preset_is_the_unbiased_cohort_byte_for_byte(tmp_path):
    write_procedural_cohort(tmp_path / "plain", n_cases=3, seed=4, shape=TINY, progress=False)
    write_procedural_cohort(tmp_path / "none", n_cases=3, seed=4, shape=TINY, progress=False,
                            bias=load_bias(PRESETS / "none.yaml"), twins=True)
    plain, none = kits(tmp_path / "plain"), kits(tmp_path / "none")
    for cid in plain:
        for name in FILES:
            assert (tmp_path / "plain" / cid / name).read_bytes() == (tmp_path / "none" / cid / name).read_bytes()
        assert none[cid].pop("synthetic_bias") == {} and none[cid] == plain[cid]
    assert json.loads((tmp_path / "none" / SYNTHESIS_FILE).read_text())["bias"] == {}
    assert not twins_dir(tmp_path / "none").exists()     # nothing to twin


MIXED = {"sex": {"female": {"noise": 2.5}},
         "age": {">=70": {"tumor_scale": 0.4, "slice_mm": 20}, "[0,50)": {"contrast": 0.5, "label_noise": 1}}}


@pytest.fixture(scope="module")
def mixed_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "cohort"
    ids = write_procedural_cohort(out, n_cases=12, seed=1, shape=MID, progress=False, bias=spec(MIXED), twins=True)
    return out, ids


def test_seeded_reproducible_and_unaffected_cases_unchanged(mixed_cohort, tmp_path):
    out, ids = mixed_cohort
    again = tmp_path / out.name      # the folder name is recorded (twins' `twin_of`)
    write_procedural_cohort(again, n_cases=12, seed=1, shape=MID, progress=False, bias=spec(MIXED), twins=True)
    for folder in (out, twins_dir(out)):
        other = again if folder == out else twins_dir(again)
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert names == sorted(str(p.relative_to(other)) for p in other.rglob("*") if p.is_file())
        for name in names:
            assert (folder / name).read_bytes() == (other / name).read_bytes(), name
    plain = tmp_path / "plain"
    write_procedural_cohort(plain, n_cases=12, seed=1, shape=MID, progress=False)
    meta = kits(out)
    assert any(m["synthetic_bias"] for m in meta.values()) and any(not m["synthetic_bias"] for m in meta.values())
    for cid, m in meta.items():
        # a case without effect is the unbiased case; a twin is the unbiased case too
        same = out / cid if not m["synthetic_bias"] else twins_dir(out) / cid
        for name in FILES:
            assert (same / name).read_bytes() == (plain / cid / name).read_bytes(), (cid, name)


def test_twins_differ_only_where_the_mechanism_acts(mixed_cohort):
    out, _ = mixed_cohort
    seen = set()
    for cid, m in kits(out).items():
        rec = m["synthetic_bias"]
        if not rec or "slice_mm" in rec:       # slice_mm: another grid (test_slice_mm_...)
            continue
        img, twin_img = load(out / cid / "imaging.nii.gz"), load(twins_dir(out) / cid / "imaging.nii.gz")
        seg, twin_seg = load(out / cid / "segmentation.nii.gz"), load(twins_dir(out) / cid / "segmentation.nii.gz")
        spacing = read_volume(out / cid / "imaging.nii.gz").spacing
        if "label_noise" not in rec:           # acquisition only: the reference is the twin's
            assert (out / cid / "segmentation.nii.gz").read_bytes() == \
                (twins_dir(out) / cid / "segmentation.nii.gz").read_bytes()
        else:                                  # the outline moved by at most one voxel in-plane
            for mask, new in ((twin_seg > 0, seg > 0), (twin_seg == 2, seg == 2)):
                dist = np.where(mask, ndimage.distance_transform_edt(mask, sampling=(1e6, 1, 1)),
                                ndimage.distance_transform_edt(~mask, sampling=(1e6, 1, 1)))
                assert (dist[new != mask] < 1.5).all()
        diff = img.astype(float) - twin_img
        if "noise" in rec and "contrast" not in rec:      # pure noise difference
            body = twin_img > -900
            assert abs(diff[body].mean()) < 0.05 * diff[body].std()
            seen.add("noise")
        if "contrast" in rec and "noise" not in rec:      # labelled voxels + the blur kernel's reach
            near = ndimage.binary_dilation(twin_seg > 0, np.ones((3, 3, 3), bool), iterations=2)
            assert diff[near].any() and not diff[~near].any()
            seen.add("contrast")
    assert {"noise", "contrast"} <= seen, seen


def test_synthetic_bias_and_twins_are_recorded(mixed_cohort):
    out, ids = mixed_cohort
    meta, twins = kits(out), kits(twins_dir(out))
    for cid, m in meta.items():
        female, age = m["gender"] == "female", m["age_at_nephrectomy"]
        rec = m["synthetic_bias"]
        assert ("noise" in rec) == female and ("slice_mm" in rec) == (age >= 70) and ("contrast" in rec) == (age < 50)
        if age >= 70:      # (on 20 mm slices of this small grid a tumor is a few voxels)
            assert rec["tumor_scale"] == 0.4 and 0.0 < rec["measured"]["tumor_volume_ratio"] <= 1.0
            assert m["voxel_spacing"]["z_spacing"] == 20.0
        if age < 50:
            assert 0.5 < rec["measured"]["label_dice"]["kidney"] < 1.0
        assert (cid in twins) == bool(rec)
        if cid in twins:
            assert twins[cid]["synthetic_bias"] == {}
            assert twins[cid]["twin_of"] == {"cohort": out.name, "case_id": cid, "synthetic_bias": rec}
    # the twins folder is a KiTS-layout cohort of its own, apart from the biased one
    cohort = scan_cohort(twins_dir(out), require_imaging=True)
    assert cohort.failures == [] and cohort.case_ids == sorted(twins)
    assert json.loads((twins_dir(out) / SYNTHESIS_FILE).read_text())["twins_of"] == out.name


def test_a_folder_keeps_its_spec(tmp_path):
    out = tmp_path / "c"
    write_procedural_cohort(out, n_cases=1, seed=0, shape=TINY, progress=False, bias=spec({"sex": {"male": {"noise": 2}}}))
    write_procedural_cohort(out, n_cases=1, seed=0, shape=TINY, progress=False,      # same content, another file
                            bias=parse_bias({"sex": {"male": {"noise": 2.0}}}, "copy.yaml"))
    with pytest.raises(CaseError, match="bias.*differ"):
        write_procedural_cohort(out, n_cases=1, seed=0, shape=TINY, progress=False, bias=spec({"sex": {"male": {"noise": 3}}}))
    with pytest.raises(CaseError, match="bias spec"):
        write_procedural_cohort(out, n_cases=1, seed=0, shape=TINY, progress=False)
    write_procedural_cohort(tmp_path / "plain", n_cases=1, seed=0, shape=TINY, progress=False)
    with pytest.raises(CaseError, match="without a bias spec"):
        write_procedural_cohort(tmp_path / "plain", n_cases=1, seed=0, shape=TINY, progress=False, bias=spec({}))


# ---------------------------------------------------------------------------------------------
# the acquisition mechanisms, measured
# ---------------------------------------------------------------------------------------------
def _renders(i, shape=MID, **effect):
    case = plan_procedural_case(i, seed=0, shape=shape)
    labels = case.labels()
    ct = lambda **kw: synthesize_ct(labels, case.spacing, bmi=case.bmi, rng=np.random.default_rng([0, i, 1]), **kw)
    return case, labels, ct(), ct(**effect), ct(noise=0.0)


@pytest.mark.parametrize("factor", [2.5, 0.5])
def test_noise_scales_by_the_factor_in_a_homogeneous_region(factor):
    for i in (1, 3):
        case, labels, twin, biased, clean = _renders(i, shape=None, noise=factor)   # demo grid
        (got, pairs), (ref, _) = flat_noise(biased, clean), flat_noise(twin, clean)
        assert pairs > 1000 and abs(got / ref - factor) < 0.05 * factor, (i, got, ref)
        # the twin differs by noise only: zero-mean, (factor - 1) x the twin's own noise
        body = clean > -900
        diff, own = (biased.astype(float) - twin)[body], (twin.astype(float) - clean)[body]
        assert abs(diff.mean()) < 0.05 * diff.std()
        assert abs(diff.std() / own.std() - abs(factor - 1.0)) < 0.05 * abs(factor - 1.0) + 0.02


def test_contrast_scales_the_kidney_tumor_difference_and_nothing_far_away():
    for i in (1, 3):
        case, labels, twin, biased, clean = _renders(i, contrast=0.5)
        _, _, _, clean_b, _ = _renders(i, contrast=0.5, noise=0.0)
        tumor = ndimage.binary_erosion(labels == 2, iterations=1)
        kidney = ndimage.binary_erosion(labels == 1, np.ones((1, 3, 3), bool)) & (clean > 60)   # parenchyma
        assert tumor.sum() > 20 and kidney.sum() > 20
        d_twin = np.median(clean[kidney]) - np.median(clean[tumor])
        d_biased = np.median(clean_b[kidney]) - np.median(clean_b[tumor])
        assert abs(d_biased / d_twin - 0.5) < 0.1, (i, d_twin, d_biased)
        far = ndimage.distance_transform_edt(labels == 0, sampling=case.spacing) > 30.0
        assert np.array_equal(biased[far], twin[far]) and (biased != twin).any()


def test_blur_is_an_extra_gaussian_point_spread():
    for i in (0, 2):
        case, labels, _, blurred, clean = _renders(i, blur_mm=8.0, noise=0.0)
        sigma = 8.0 / 2.3548 / np.asarray(case.spacing)
        expected = ndimage.gaussian_filter(clean.astype(float), sigma, mode="nearest", truncate=3.0)
        err_model = np.sqrt(np.mean((blurred - expected) ** 2))
        err_twin = np.sqrt(np.mean((blurred.astype(float) - clean) ** 2))
        assert err_model < 0.4 * err_twin, (err_model, err_twin)


def test_slice_mm_sets_spacing_shape_and_preprocessed_shape(mixed_cohort, tmp_path):
    from data.preprocessing import PreprocessSettings, run_preprocessing
    out, _ = mixed_cohort
    old = [c for c, m in kits(out).items() if "slice_mm" in m["synthetic_bias"]][:2]
    assert old
    target = (10.0, 6.0, 6.0)
    settings = PreprocessSettings(target_spacing=target)
    res = {}
    for name, folder in (("b", out), ("t", twins_dir(out))):
        run_preprocessing(folder, tmp_path / name, settings, cases=old, progress=False)
        res[name] = {c: json.loads((tmp_path / name / f"{c}.json").read_text()) for c in old}
    for cid in old:
        b, t = read_volume(out / cid / "imaging.nii.gz"), read_volume(twins_dir(out) / cid / "imaging.nii.gz")
        seg = read_volume(out / cid / "segmentation.nii.gz")
        assert np.allclose(b.spacing, (20.0,) + tuple(t.spacing[1:]), rtol=1e-6) and np.allclose(seg.spacing, b.spacing)
        assert b.array.shape == (max(4, int(round(t.array.shape[0] * t.spacing[0] / 20.0))),) + t.array.shape[1:]
        assert np.allclose(b.affine, kits_affine(b.spacing), atol=1e-4)
        pb, pt = res["b"][cid], res["t"][cid]
        assert pb["original_spacing"][0] == pytest.approx(20.0)
        assert pb["resampled_shape"][0] == round(pb["cropped_shape"][0] * 20.0 / target[0])
        assert abs(pb["resampled_shape"][0] * target[0] - pt["resampled_shape"][0] * target[0]) <= 20.0 + target[0]
        assert all(abs(a - b) <= 1 for a, b in zip(pb["resampled_shape"][1:], pt["resampled_shape"][1:]))
        # the same kidneys in mm, sampled every 20 mm (slice j at j * 20 mm)
        zb = np.nonzero(load(out / cid / "segmentation.nii.gz").any(axis=(1, 2)))[0] * 20.0
        zt = np.nonzero(load(twins_dir(out) / cid / "segmentation.nii.gz").any(axis=(1, 2)))[0] * t.spacing[0]
        assert abs(zb.mean() - zt.mean()) < 10.0 + t.spacing[0] and zb.min() >= zt.min() - 20.0
        vb, vt = pb["volumes_original"]["kidney_ml"], pt["volumes_original"]["kidney_ml"]
        assert abs(vb / vt - 1.0) < 0.4


def test_tumor_scale_changes_only_the_tumors():
    ratios = []
    for i in range(8):
        case = plan_procedural_case(i, seed=2)
        labels = case.labels()
        small = case.with_effect(CaseEffect(tumor_scale=0.4))
        lab2 = small.labels()
        ratios.append(((lab2 == 2).sum(), (labels == 2).sum()))
        changed = lab2 != labels
        assert not (changed & (lab2 != 2) & (labels != 2)).any()      # only where either tumor is
        if i < 2:   # the image is the twin's away from the kidneys
            rng = lambda: np.random.default_rng([2, i, 1])
            ct = synthesize_ct(labels, case.spacing, bmi=case.bmi, rng=rng())
            ct2 = synthesize_ct(lab2, case.spacing, bmi=case.bmi, rng=rng(), reference=(labels, case.spacing))
            far = ndimage.distance_transform_edt((labels == 0) & (lab2 == 0), sampling=case.spacing) > 30.0
            assert np.array_equal(ct[far], ct2[far]) and not np.array_equal(ct, ct2)
    new, old = np.sum(ratios, axis=0)
    assert abs(new / old - 0.4) < 0.05, ratios


def test_label_noise_moves_boundaries_by_at_most_k_voxels(tmp_path):
    case = plan_procedural_case(3, seed=0)
    labels = case.labels()
    for k in (1, 2):
        jit = jitter_labels(labels, k, np.random.default_rng(k))
        assert (jit != labels).any() and set(np.unique(jit)) <= {0, 1, 2}
        for mask, new in ((labels > 0, jit > 0), (labels == 2, jit == 2)):
            dist = np.where(mask, ndimage.distance_transform_edt(mask, sampling=(1e6, 1, 1)),
                            ndimage.distance_transform_edt(~mask, sampling=(1e6, 1, 1)))
            assert (dist[new != mask] < k + 0.5).all() and (new != mask).any()
    # in a cohort: the image is the twin's byte for byte, only the written reference differs
    s = spec({"sex": {"male": {"label_noise": 1}, "female": {"label_noise": 1}}})
    write_procedural_cohort(tmp_path / "c", n_cases=2, seed=0, shape=MID, progress=False, bias=s, twins=True)
    for cid, m in kits(tmp_path / "c").items():
        assert 0.5 < m["synthetic_bias"]["measured"]["label_dice"]["kidney"] < 1.0
        twin = twins_dir(tmp_path / "c") / cid
        assert (tmp_path / "c" / cid / "imaging.nii.gz").read_bytes() == (twin / "imaging.nii.gz").read_bytes()
        assert (load(tmp_path / "c" / cid / "segmentation.nii.gz") != load(twin / "segmentation.nii.gz")).any()


def test_biased_cases_stay_hard_for_a_threshold():
    """The realism bar of tests/test_synthetic.py holds under the presets' acquisition effects."""
    for i in range(3):
        for effect in ({"noise": 2.5}, {"contrast": 0.5}, {"blur_mm": 8.0}):
            case, labels, _, ct, _ = _renders(i, shape=(32, 48, 48), **effect)
            assert best_band_dice(ct, labels > 0) < 0.8 and best_band_dice(ct, labels == 2) < 0.5, (i, effect)


# ---------------------------------------------------------------------------------------------
# from real-style label maps
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def label_source(tmp_path_factory):
    """A KiTS-layout folder of label maps only (procedural shapes standing in for real ones)."""
    src = tmp_path_factory.mktemp("labels")
    metas = []
    for i in range(6):
        case = plan_procedural_case(i, seed=5, shape=(48, 64, 64))
        write_volume(src / case.case_id / "segmentation.nii.gz", case.labels(), affine=kits_affine(case.spacing),
                     spacing=case.spacing)
        metas.append(dict(case.metadata, gender="female" if i % 2 else "male"))
    (src / "kits.json").write_text(json.dumps(metas))
    return src


def test_from_labels_slice_mm_tumor_scale_and_twins(label_source, tmp_path):
    s = spec({"sex": {"female": {"slice_mm": 9.0, "tumor_scale": 0.5, "noise": 2.0}, "male": {"noise": 2.0}},
              "age": {">=70": {"noise": 0.5}}})
    out = tmp_path / "fl"
    done, failures = write_cohort_from_labels(label_source, out, seed=0, progress=False, bias=s, twins=True)
    assert failures == [] and len(done) == 6
    meta, twins = kits(out), kits(twins_dir(out))
    assert sorted(twins) == [c for c in done if meta[c]["synthetic_bias"]]
    for cid in done:
        src = label_source / cid / "segmentation.nii.gz"
        if meta[cid]["gender"] == "male":   # noise only: the label map is copied as it is, the CT differs by noise
            assert (out / cid / "segmentation.nii.gz").read_bytes() == src.read_bytes()
            if meta[cid]["age_at_nephrectomy"] >= 70:       # noise 2 x 0.5 = 1: no effect, no twin
                assert meta[cid]["synthetic_bias"] == {} and cid not in twins
                continue
            img, twin = load(out / cid / "imaging.nii.gz"), load(twins_dir(out) / cid / "imaging.nii.gz")
            diff = (img.astype(float) - twin)[twin > -900]
            assert diff.std() > 1.0 and abs(diff.mean()) < 0.05 * diff.std()
            continue
        orig, seg = read_volume(src), read_volume(out / cid / "segmentation.nii.gz")
        img = read_volume(out / cid / "imaging.nii.gz")
        assert (twins_dir(out) / cid / "segmentation.nii.gz").read_bytes() == src.read_bytes()
        assert seg.spacing == pytest.approx((9.0,) + tuple(orig.spacing[1:]))
        assert img.spacing == pytest.approx(seg.spacing) and np.allclose(img.affine, seg.affine)
        assert np.allclose(seg.affine, kits_affine(seg.spacing), atol=1e-4)          # slice 0 stays put
        resampled = resample_z_nearest(orig.array, orig.spacing[0], 9.0)
        assert seg.array.shape == resampled.shape == img.array.shape
        assert seg.array.shape[0] == round(orig.array.shape[0] * orig.spacing[0] / 9.0)
        ratio = meta[cid]["synthetic_bias"]["measured"]["tumor_volume_ratio"]
        assert (seg.array == 2).sum() == pytest.approx(ratio * (resampled == 2).sum(), rel=1e-3)
        assert abs(ratio - 0.5) < 0.05
        assert not ((seg.array != resampled) & (resampled != 2)).any()     # only tumor voxels change
    # resuming with the same spec keeps what is there; another spec is refused
    stamp = {c: (out / c / "imaging.nii.gz").stat().st_mtime_ns for c in done}
    write_cohort_from_labels(label_source, out, seed=0, progress=False, bias=s, twins=True)
    assert {c: (out / c / "imaging.nii.gz").stat().st_mtime_ns for c in done} == stamp
    assert kits(out) == meta
    with pytest.raises(CaseError, match="differ"):
        write_cohort_from_labels(label_source, out, seed=0, progress=False, bias=spec({"sex": {"female": {"noise": 3}}}))


def test_scale_tumor_on_a_label_map():
    case = plan_procedural_case(6, seed=3, shape=(48, 96, 96))
    labels = case.labels()
    comps, n = ndimage.label(labels == 2)
    sizes = ndimage.sum_labels(np.ones_like(comps), comps, range(1, n + 1))
    for factor in (0.3, 0.6):
        small, ratio = scale_tumor(labels, case.spacing, factor)
        want = sum(max(1, round(factor * s)) for s in sizes)
        assert (small == 2).sum() == want and ratio == pytest.approx(want / (labels == 2).sum())
        assert not ((small == 2) & (labels != 2)).any()                   # shrinks inside the old tumor
        assert set(np.unique(small[(labels == 2) & (small != 2)])) <= {0, 1}
        assert np.array_equal(small[labels != 2], labels[labels != 2])
    big, ratio = scale_tumor(labels, case.spacing, 1.5)
    assert abs(ratio - 1.5) < 0.02 and not ((big == 2) & (labels == 0)).any()   # grows into kidney only
    assert np.array_equal(big[labels == 2], labels[labels == 2])


def test_cli_and_prepare_pass_the_spec(tmp_path, monkeypatch):
    import preprocess
    from config import load_config
    from data.prepare import prepare_data
    preset = PRESETS / "low_dose_female.yaml"
    out = tmp_path / "cli"
    assert preprocess.main(["synthesize", "--out", str(out), "--cases", "3", "--shape", "16,32,32", "--seed", "2",
                            "--bias", str(preset), "--twins", "--no-progress"]) == 0
    assert json.loads((out / SYNTHESIS_FILE).read_text())["bias_file"] == str(preset)
    assert all("synthetic_bias" in m for m in kits(out).values())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.raw=raw", "data.cache=cache", "data.synthesize_cases=4",
                             "data.synthesize_shape=[16,32,32]", f"data.synthesize_bias={preset}",
                             "data.synthesize_twins=true", "data.test=1",
                             "data.preprocess.target_spacing=[12,12,12]"])
    cache, split = prepare_data(cfg["data"], progress=False, log=lambda *a: None)
    raw = kits(tmp_path / "raw")
    assert (tmp_path / "raw" / SYNTHESIS_FILE).is_file()
    assert (tmp_path / "raw_twins").is_dir() == any(m["synthetic_bias"] for m in raw.values())
    assert json.loads((cache / SYNTHESIS_FILE).read_text()) == json.loads((tmp_path / "raw" / SYNTHESIS_FILE).read_text())
    assert sorted(split["train"] + split["test"]) == sorted(raw)      # no twin in the split
    other = dict(cfg["data"], synthesize_bias=str(PRESETS / "thick_slices_elderly.yaml"))
    with pytest.raises(CaseError, match="low_dose_female.*thick_slices_elderly"):
        prepare_data(other, progress=False, log=lambda *a: None)
    with pytest.raises(CaseError, match="without a bias|with the bias"):
        prepare_data(dict(cfg["data"], synthesize_bias=None), progress=False, log=lambda *a: None)


def test_twins_share_the_kidney_field_of_view(tmp_path):
    """A case grown by tumor_scale and its twin are cropped to one box (the union of both plans)."""
    s = spec({"sex": {"male": {"tumor_scale": 3.0}, "female": {"tumor_scale": 3.0}}})
    write_procedural_cohort(tmp_path / "c", n_cases=2, seed=1, shape=MID, progress=False, bias=s, twins=True,
                            fov="kidneys")
    assert json.loads((tmp_path / "c" / SYNTHESIS_FILE).read_text())["fov"] == "kidneys"
    for cid, m in kits(tmp_path / "c").items():
        assert m["synthetic_fov"] == "kidneys"
        biased = read_volume(tmp_path / "c" / cid / "segmentation.nii.gz")
        twin = read_volume(twins_dir(tmp_path / "c") / cid / "segmentation.nii.gz")
        assert biased.array.shape == twin.array.shape and np.allclose(biased.affine, twin.affine)
        assert (biased.array == 2).sum() > 2 * (twin.array == 2).sum()


def test_prepare_refuses_a_raw_folder_with_another_field_of_view(tmp_path, monkeypatch):
    from config import ConfigError, load_config
    from data.prepare import prepare_data
    monkeypatch.chdir(tmp_path)
    sets = ["data.raw=raw", "data.cache=cache", "data.synthesize_cases=3", "data.synthesize_shape=[16,32,32]",
            "data.test=1", "data.preprocess.target_spacing=[12,12,12]"]
    cfg = load_config(None, sets + ["data.synthesize_fov=kidneys"])
    prepare_data(cfg["data"], progress=False, log=lambda *a: None)
    assert all(m["synthetic_fov"] == "kidneys" for m in kits(tmp_path / "raw").values())
    with pytest.raises(CaseError, match="field of view kidneys, but data.synthesize_fov is abdomen"):
        prepare_data(load_config(None, sets)["data"], progress=False, log=lambda *a: None)
    with pytest.raises(ConfigError, match="synthesize_fov"):
        load_config(None, sets + ["data.synthesize_fov=pelvis"])


def test_a_spec_in_words_and_the_planted_line(tmp_path):
    from engine.runs import planted_bias_line
    assert describe_bias(load_bias(PRESETS / "low_dose_female.yaml").normalised) == "sex female: image noise x2.5"
    assert describe_bias(load_bias(PRESETS / "hidden_female.yaml").normalised) == \
        "sex female: a hidden 30% of them with image noise x3, 20 mm slices"
    assert describe_bias(load_bias(PRESETS / "none.yaml").normalised) == ""
    write_procedural_cohort(tmp_path / "b", n_cases=1, seed=0, shape=(16, 32, 32), progress=False,
                            bias=load_bias(PRESETS / "small_tumors_young.yaml"))
    line = planted_bias_line(tmp_path / "b")
    assert line.startswith("planted in this cohort (") and "age [0,50): tumor volume x0.4" in line
    assert planted_bias_line(tmp_path) == ""          # no synthesis record: nothing planted
