"""Property-based fuzzing of the readers (hypothesis): every generated input gives a working result
or the one-line error the entry points print (CaseError for data, ConfigError for configs), never
another exception (which would reach the user as a traceback).

    kits.json     arbitrary JSON values in the fields the tools read, and arbitrary documents
    NIfTI         random dims, zooms, datatypes, scl_slope / scl_inter, qform / sform codes
    label maps    random values and dtypes through the label scheme, Dice and surface metrics
    configs       random YAML documents and random keys and values in the real sections

FUZZ_EXAMPLES (environment) sets the examples per property (default 60, the suite's budget).
"""
import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from config import DEFAULTS, ConfigError, load_config  # noqa: E402
from data.errors import CaseError  # noqa: E402
from data.kits import scan_cohort  # noqa: E402
from data.labels import LabelScheme  # noqa: E402
from data.nifti import read_volume  # noqa: E402
from data.preprocessing import PreprocessSettings, case_groups  # noqa: E402
from engine.builders import check_choices  # noqa: E402
from fairness.case_dice import kits_case_dice  # noqa: E402
from fairness.surface import kits_case_surface  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
FIELDS = ("case_id", "gender", "age_at_nephrectomy", "body_mass_index")


@pytest.fixture(scope="module")
def cohort_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_kits")
    for case_id in ("case_00000", "case_00001"):
        (root / case_id).mkdir()
        (root / case_id / "segmentation.nii.gz").write_bytes(b"")   # scan_cohort only looks for the file
    return root


@FUZZ
@given(entries=st.lists(st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS}), max_size=3),
       base=st.booleans(), whole=st.one_of(st.none(), json_values))
def test_kits_json_values_give_records_or_one_line_errors(cohort_root, entries, base, whole):
    good = [{"case_id": "case_00000", "gender": "female", "age_at_nephrectomy": 60, "body_mass_index": 25.0},
            {"case_id": "case_00001", "gender": "male", "age_at_nephrectomy": 40}]
    document = whole if whole is not None else (good if base else []) + entries
    for entry, fuzzed in zip(good if base else [], entries):
        entry.update(fuzzed)                                     # fuzz the real entries' fields too
    (cohort_root / "kits.json").write_text(json.dumps(document))
    try:
        cohort = scan_cohort(cohort_root)
    except CaseError:
        return
    for failure in cohort.failures:
        assert isinstance(failure, CaseError) and "\n" not in str(failure)
    for record in cohort.records:
        row = case_groups(record.meta, PreprocessSettings())  # what cases.csv and every group table read
        assert row["sex"] in ("male", "female") and math.isfinite(row["age"])


DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64]
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@FUZZ
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), dtype=st.sampled_from(DTYPES),
       zooms=st.lists(st.one_of(floats, st.floats(0.1, 5.0)), min_size=5, max_size=5),
       slope=st.one_of(st.just(None), floats), inter=st.one_of(st.just(None), floats),
       qform=st.integers(-2, 6), sform=st.integers(-2, 6), seed=st.integers(0, 2**16))
def test_nifti_headers_give_volumes_or_one_line_errors(tmp_path, shape, dtype, zooms, slope, inter, qform, sform, seed):
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 4).astype(dtype)
    img = nib.Nifti1Image(array, np.diag([1.0, 1.0, 1.0, 1.0]))
    header = img.header             # the raw fields, past nibabel's own checks: what a broken file holds
    header["pixdim"][1:1 + len(shape)] = zooms[: len(shape)]
    header["scl_slope"] = np.nan if slope is None else slope
    header["scl_inter"] = np.nan if inter is None else inter
    header["qform_code"], header["sform_code"] = qform, sform
    path = tmp_path / "fuzz.nii.gz"
    try:
        nib.save(img, str(path))
    except Exception:  # noqa: BLE001 - nibabel refused to write this header: nothing to read
        assume(False)
    try:
        vol = read_volume(path, where="fuzz")
    except CaseError as err:
        assert "\n" not in str(err)
        return
    assert vol.array.ndim == 3 and all(math.isfinite(s) and s > 0 for s in vol.spacing)
    try:
        LabelScheme.parse("kits19").apply(vol.array, where="fuzz")
    except CaseError as err:
        assert "\n" not in str(err)


@FUZZ
@given(values=st.lists(st.integers(-3, 300), min_size=1, max_size=6), dtype=st.sampled_from(DTYPES + [np.int64]),
       seed=st.integers(0, 2**16), scheme=st.sampled_from(["kits19", "kits23-cyst-kidney", "0:0,1:1,2:2,3:0,255:0"]))
def test_label_values_map_score_or_fail_by_name(values, dtype, seed, scheme):
    rng = np.random.default_rng(seed)
    raw = rng.choice(np.asarray(values), size=(6, 7, 8))
    if np.dtype(dtype).kind == "u":
        raw = np.abs(raw)
    raw = raw.astype(dtype) if np.can_cast(raw.max(), dtype) and np.can_cast(raw.min(), dtype) else raw
    try:
        labels = LabelScheme.parse(scheme).apply(raw, where="fuzz")
    except CaseError as err:
        assert "\n" not in str(err)
        return
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    ref = np.roll(labels, 1, axis=2)
    dice = kits_case_dice(pred=labels, ref=ref)
    surface = kits_case_surface(labels, ref, spacing=(3.0, 1.0, 1.0))
    assert all(math.isnan(v) or 0 <= v <= 1 for v in dice.values())
    assert all(math.isnan(v) or v >= 0 for v in surface.values())


sections = st.sampled_from(sorted(DEFAULTS))
config_values = st.one_of(json_values, st.lists(st.integers(-5, 200), max_size=4))


@FUZZ
@given(doc=st.one_of(
    st.dictionaries(sections, st.dictionaries(st.one_of(st.sampled_from(
        sorted({k for s in DEFAULTS.values() if isinstance(s, dict) for k in s})), st.text(max_size=8)),
        config_values, max_size=3), max_size=3),
    json_values, st.text(max_size=40)))
def test_random_yaml_configs_load_or_fail_in_one_line(tmp_path, doc):
    path = tmp_path / "fuzz.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    try:
        cfg = load_config(path)
        check_choices(cfg)
    except ConfigError as err:
        assert "\n" not in str(err).strip()
