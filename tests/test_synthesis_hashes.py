"""The synthesis gives the same pixels, whatever its code's layout: hashes of seeded cohorts (CT, labels,
metadata), recorded before data/synthetic_ct/ and data/procedural.py were split out of two long files.

A change that alters a cohort on purpose updates the hashes here and says why in its commit."""
import hashlib
import json

import numpy as np
import pytest

from data.bias import load_bias
from data.nifti import read_volume
from data.synthetic import synthesize_ct, twins_dir, write_cohort_from_labels, write_procedural_cohort
from tests.conftest import ROOT

EXPECTED = {
    "procedural poor_protocol_female abdomen": "d5a597c15f080d6b",
    "procedural hidden_small_tumors_female kidneys": "bd72e0a89124eb18",
    "from labels thick_slices_elderly + twins": "f052b4708704e942",
    "synthesize_ct noise contrast blur": "6a425daf6fd69fad",
}


def cohort_hash(folder) -> str:
    digest = hashlib.sha256()
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("case_")):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            volume = read_volume(case / name)
            digest.update(case.name.encode() + name.encode())
            digest.update(np.ascontiguousarray(volume.array).tobytes())
            digest.update(np.asarray(volume.spacing, dtype=np.float64).tobytes())
    metadata = json.loads((folder / "kits.json").read_text())
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthesis")
    bias = lambda name: load_bias(ROOT / "configs" / "bias" / f"{name}.yaml")   # noqa: E731
    out = {}
    write_procedural_cohort(tmp / "a", n_cases=4, seed=5, shape=(24, 48, 48), progress=False,
                            bias=bias("poor_protocol_female"))
    out["procedural poor_protocol_female abdomen"] = cohort_hash(tmp / "a")
    write_procedural_cohort(tmp / "b", n_cases=4, seed=7, shape=(24, 48, 48), progress=False,
                            bias=bias("hidden_small_tumors_female"), fov="kidneys")
    out["procedural hidden_small_tumors_female kidneys"] = cohort_hash(tmp / "b")
    done, failures = write_cohort_from_labels(tmp / "a", tmp / "c", seed=3, progress=False,
                                              bias=bias("thick_slices_elderly"), twins=True)
    assert done and not failures
    assert twins_dir(tmp / "c").is_dir()
    out["from labels thick_slices_elderly + twins"] = cohort_hash(tmp / "c")[:8] + cohort_hash(twins_dir(tmp / "c"))[:8]
    labels = read_volume(tmp / "a" / "case_00001" / "segmentation.nii.gz")
    ct = synthesize_ct(labels.array, labels.spacing, bmi=33.0, rng=np.random.default_rng(11), noise=2.0,
                       contrast=0.5, blur_mm=3.0)
    out["synthesize_ct noise contrast blur"] = hashlib.sha256(ct.tobytes()).hexdigest()[:16]
    return out


@pytest.mark.parametrize("what", sorted(EXPECTED))
def test_a_seeded_cohort_has_the_recorded_pixels(hashes, what):
    assert hashes[what] == EXPECTED[what]
