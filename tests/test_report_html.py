"""report.html (fairness/html_report.py): parsed as a page, its numbers against the CSVs it came
from, every section present or saying why not, nothing fetched, readable without script; and, where
Chromium is installed, rendered by a real browser (screenshot, and the sorted table sorted)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pytest

import evaluate
from tests.kits_fixtures import write_smoker_audit

SECTIONS = ("summary", "attr-sex", "gallery", "slices", "cases")


class Page(HTMLParser):
    """Tables (id of their section -> rows of cell texts), ids, image sources, links, script sources."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.links, self.scripts, self.tables = set(), [], [], [], []
        self.section, self._row, self._cell, self._row_id = None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.section = a.get("id")
        elif tag == "table":
            self.tables.append((self.section, []))
        elif tag == "tr":
            self._row, self._row_id = [], a.get("id")
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag in ("script", "link", "iframe", "source", "video", "audio"):
            self.scripts.append(a.get("src") or a.get("href"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append((self._row_id, self._row))
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, section, k=0):
        return [t for s, t in self.tables if s == section][k]


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    write_smoker_audit(root, max_missed=2)
    assert evaluate.main(["--pred", str(root / "preds"), "--gt", str(root / "raw"), "--out", str(root / "a"), "--discover",
                          "--features", "metadata,derived", "--group", "sex", "--no-progress", "--n-boot", "50",
                          "--n-perm", "200"]) == 0
    return root


def test_every_section_is_there_and_every_number_is_its_csvs(audited):
    folder = audited / "a"
    page = parse(folder / "report.html")
    assert set(SECTIONS) <= page.ids
    groups = pd.read_csv(folder / "groups_sex.csv", index_col=0)
    rows = {r[0]: r for _, r in page.table("attr-sex")[1:]}
    assert set(rows) == set(groups.index.astype(str))
    for group, row in groups.iterrows():
        cells = rows[str(group)]
        assert int(cells[1]) == row["n"]
        for k, part in enumerate(("kidney", "tumor", "mean"), start=2):
            shown = [float(v) for v in re.findall(r"-?\d+\.\d", cells[k])]
            want = [round(100 * row[part], 1)] + ([round(100 * row[f"{part}_lo"], 1), round(100 * row[f"{part}_hi"], 1)]
                                                 if pd.notna(row.get(f"{part}_lo")) else [])
            assert shown == pytest.approx(want, abs=0.051)
    per_case = pd.read_csv(folder / "per_case.csv")
    table = page.table("cases")
    header = table[0][1]
    body = {rid: cells for rid, cells in table[1:]}
    assert len(body) == len(per_case)                          # every case, in the HTML itself: no script needed
    for _, case in per_case.iterrows():
        cells = body[f"case-{case['case_id']}"]
        assert float(cells[header.index("mean")]) == pytest.approx(100 * case["mean"], abs=0.051)
    slices = pd.read_csv(folder / "slices.csv")
    shown = page.table("slices")[1:]
    assert [c[1] for _, c in shown] == slices["rule"].tolist()
    assert [float(c[header_index(page, 'slices', 'gap')]) for _, c in shown] == pytest.approx(slices["gap"].round(1), abs=0.051)


def header_index(page, section, name):
    return page.table(section)[0][1].index(name)


def test_the_first_screen_says_what_holds_and_the_footer_makes_it_citable(audited):
    text = (audited / "a" / "report.html").read_text()
    first = text[text.index("id='summary'"):text.index("id='attr-sex'")]
    assert "What was audited" in first and "predictions" in first and "cases scored</dt><dd>40" in first
    assert "By sex: " in first and ("no gap beyond noise" in first or "beyond noise in" in first)
    assert "Failing subgroups confirmed on held-out cases" in first and "smoking_history == current_smoker" in first
    footer = text[text.index("<footer>"):]
    for item in ("command", "git commit", "config digest", "seeds", "n-boot", "n-perm", "date"):
        assert f"<dt>{item}</dt>" in footer
    assert "python evaluate.py --pred" in footer and "--discover" in footer


def test_nothing_is_fetched_and_the_gallery_draws_the_worst_cases(audited):
    path = audited / "a" / "report.html"
    text = path.read_text()
    page = parse(path)
    outside_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", text)
    assert not re.search(r"(?i)https?:|ftp:|url\(|@import|src=.//", outside_images)
    assert page.scripts == [None]                                # one inline script, nothing loaded
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    gallery = text[text.index("id='gallery'"):text.index("id='slices'")]
    worst = pd.read_csv(audited / "a" / "per_case.csv").sort_values(["mean", "case_id"])["case_id"].head(3)
    for case_id in worst:
        assert f"href='#case-{case_id}'" in gallery             # a click shows its row
    assert gallery.count("<figure") >= 3
    assert all(link[1:] in page.ids for link in page.links if link.startswith("#"))   # no dead anchor


def test_no_report_and_modes_without_pictures_say_why(audited, tmp_path):
    raw, preds = audited / "raw", audited / "preds"
    assert evaluate.main(["--pred", str(preds), "--gt", str(raw), "--out", str(tmp_path / "quiet"), "--no-report",
                          "--no-progress", "--n-boot", "20", "--n-perm", "100"]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists() and (tmp_path / "quiet" / "per_case.csv").is_file()
    summary = {"metric_per_case": [
        {"reference_file": f"/nowhere/{c}.nii.gz", "prediction_file": f"/nowhere/p/{c}.nii.gz",
         "metrics": {"1": {"Dice": 0.9, "n_ref": 10, "n_pred": 10, "TP": 9, "FP": 1, "FN": 1, "TN": 100},
                     "2": {"Dice": 0.5, "n_ref": 10, "n_pred": 10, "TP": 5, "FP": 5, "FN": 5, "TN": 100}}}
        for c in sorted(p.name for p in raw.iterdir() if p.is_dir())]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert evaluate.main(["--nnunet-summary", str(tmp_path / "summary.json"), "--meta", str(raw / "kits.json"),
                          "--out", str(tmp_path / "s"), "--no-progress", "--n-boot", "20", "--n-perm", "100"]) == 0
    text = (tmp_path / "s" / "report.html").read_text()
    gallery = text[text.index("id='gallery'"):text.index("id='slices'")]
    assert "class='absent'" in gallery and "<img" not in gallery
    slices = text[text.index("id='slices'"):]
    assert "discovery did not run" in slices


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Chromium is not installed (Debian: apt-get install chromium); the page is still parsed above")
def test_a_real_browser_renders_the_page_and_sorts_its_table(audited, tmp_path):
    path = audited / "a" / "report.html"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    for name, width in (("desktop", 1280), ("phone", 390)):
        shot = tmp_path / f"{name}.png"
        subprocess.run(base + [f"--window-size={width},900", f"--screenshot={shot}", path.as_uri()],
                       check=True, capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000
    dom = subprocess.run(base + ["--dump-dom", path.as_uri() + "#sort=mean"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    page = Page()
    page.feed(dom)
    table = page.table("cases")
    col = table[0][1].index("mean")
    means = [float(cells[col]) for _, cells in table[1:]]
    assert means == sorted(means) and len(means) == 40


def test_an_unreadable_picture_costs_the_page_that_picture_not_the_audit(audited, tmp_path):
    from fairness.html_report import ReportContext, build_html
    folder = audited / "a"
    per_case = pd.read_csv(folder / "per_case.csv")
    worst = per_case.sort_values(["mean", "case_id"])["case_id"].iloc[0]
    raw = tmp_path / "raw"
    shutil.copytree(audited / "raw", raw)
    (raw / worst / "imaging.nii.gz").write_bytes(b"not a NIfTI")
    per_case["reference_file"] = [str(raw / c / "segmentation.nii.gz") for c in per_case["case_id"]]
    per_case["prediction_file"] = [str(audited / "preds" / f"{c}.nii.gz") for c in per_case["case_id"]]
    page = build_html(folder, ReportContext(title="t"), per_case)
    gallery = page[page.index("id='gallery'"):page.index("id='slices'")]
    assert f"{worst}:" in gallery and "their files unreadable" in gallery and gallery.count("<figure") >= 3
