"""report.html: an audit folder as one self-contained page a person reads.

The page is built from the files the audit wrote beside it (groups_*.csv, summary_*.csv,
report_*.md, box_*.png, slices.csv, slice_members.csv, per_case.csv, summary.json, compare*.csv,
tradeoff_*.png), so every number on it is the number in its CSV, rounded for reading. It opens
offline: images are embedded as PNG data, there is no fetch, font or script from elsewhere, and
the only script (sorting the per-case table by a column) is inline and optional: without it every
table is there, and a case's link jumps to its row.

Sections, each present or saying why it is absent:
    first screen   what was audited; the gaps that hold after the screen's Holm correction, or
                   "no gap beyond noise" with the detectable gap; the confirmed failure slices
    per attribute  the group table with intervals, the significance lines, the box plot
    gallery        the worst cases overall and per group: an axial CT slice through the largest
                   error with reference and prediction contours (needs the CT beside the reference)
    slices         discovery's slices with their members
    comparison     (--compare) the methods' table, the paired Δ with Holm, the trade-off figures
    per-case table every case, sortable
    footer         command line, git commit, config digest, seeds, n-boot, n-perm, date

Usage:
    context = ReportContext(title="runs/x/last.pt, 40 cases", audited=[("model", "runs/x/last.pt")],
                            command="python evaluate.py --ckpt runs/x/last.pt", n_boot=2000, n_perm=5000)
    write_html_report(out_dir, context)          # out_dir/report.html
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import CaseError
from data.nnunet import FILE_COLUMNS
from fairness.metrics import METRICS

REPORT_NAME = "report.html"
NUMERIC = re.compile(r"^[-+]?(\d|inf|-$|<)")       # cells right-aligned as numbers
GALLERY_PER_GROUP = 3
ALPHA = 0.05
CLASS_PARTS = ("mean", "kidney", "tumor")


@dataclass
class ReportContext:
    title: str
    audited: list = field(default_factory=list)   # [(label, value)]: what was audited, in words
    command: str = ""
    commit: str = ""
    config_digest: str = ""
    seeds: str = ""
    n_boot: int | None = None
    n_perm: int | None = None
    gallery: int = GALLERY_PER_GROUP              # worst cases shown overall and per group
    gallery_absent: str = ""                      # why there is no gallery, when the caller knows
    lines: dict = field(default_factory=dict)     # {name: [significance lines]} where no report_<name>.md is
    date: str = ""                                # default: now, UTC


class Markup(str):
    """A piece of HTML this module built from escaped parts. Every other string that reaches the page
    (a group name, an attribute, a case id, a rule, a title, a cell) is escaped where it meets the
    page: by table_html, section, nav_html, image_html, esc; nothing a user's file holds is put in a
    tag, an attribute, an id or a link unescaped (a report is a file people mail to each other)."""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def cell_html(value) -> str:
    """A table cell: Markup as it is, anything else escaped."""
    return value if isinstance(value, Markup) else esc(value)


def png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_data(fig, dpi: int = 90) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return png_data(buffer.getvalue())


def number(value, scale: float = 1.0, digits: int = 1) -> str:
    """A value as shown on the page ('-' for a missing one; 'inf' kept)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return "-"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{scale * value:.{digits}f}"


def p_text(p) -> str:
    if p is None or pd.isna(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# ----------------------------------------------------------------------------- the folder's audits
class AuditFiles:
    """The files of this audit in its folder: those the audit wrote in this run (data/atomic.recording:
    an earlier run's groups_age.csv is not one of them), or, when no run is recording (a folder read
    after the fact), what the folder holds."""

    def __init__(self, folder: Path, written: set | None):
        self.folder, self.written = Path(folder), written

    def glob(self, pattern: str) -> list[Path]:
        return [p for p in sorted(self.folder.glob(pattern)) if self.written is None or p.name in self.written]

    def get(self, name: str) -> Path | None:
        path = self.folder / name
        return path if path.is_file() and (self.written is None or name in self.written) else None



@dataclass
class AttributeAudit:
    name: str                  # the file stem: groups_<name>.csv
    attribute: str
    metric: object             # fairness.metrics.Metric
    groups: pd.DataFrame       # groups_<name>.csv, indexed by group (the "all" row last)
    summary: pd.Series         # summary_<name>.csv: figure -> value
    summary_lo: pd.Series
    summary_hi: pd.Series
    lines: list                # the significance lines (report_<name>.md's summary, split)
    box: Path | None


def read_audits(folder: Path, files: AuditFiles | None = None) -> list[AttributeAudit]:
    files = files or AuditFiles(folder, None)
    out = []
    for path in files.glob("groups_*.csv"):
        name = path.stem[len("groups_"):]
        attribute, metric = name, METRICS["dice"]
        for m in METRICS.values():
            if m.name != "dice" and name.endswith(f"_{m.name}"):
                attribute, metric = name[: -len(m.name) - 1], m
        groups = pd.read_csv(path, index_col=0, keep_default_na=False, na_values=[""])
        groups.index = groups.index.astype(str)
        summary_path = files.get(f"summary_{name}.csv")
        summary = pd.read_csv(summary_path, index_col=0) if summary_path else pd.DataFrame(
            columns=["value", "lo", "hi"])
        report = files.get(f"report_{name}.md")
        lines = []
        if report:
            paragraphs = [p.strip() for p in report.read_text().split("\n\n") if p.strip()]
            if paragraphs and not paragraphs[-1].startswith("|"):   # Markdown-escaped (fairness.report.md_text)
                lines = split_outside_parentheses(html.unescape(paragraphs[-1]))
        box = files.get(f"box_{name}.png")
        out.append(AttributeAudit(name, attribute, metric, groups, summary["value"], summary.get("lo"),
                                  summary.get("hi"), lines, box))
    return out


def split_outside_parentheses(text: str, sep: str = "; ") -> list[str]:
    """text split at sep where it is not inside parentheses or brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def finding(audit: AttributeAudit) -> str:
    """One sentence per attribute for the first screen: the gaps beyond noise after Holm, or none."""
    s, m = audit.summary, audit.metric
    groups = audit.groups.drop(index="all", errors="ignore")
    if groups.empty or "gap" not in s:
        return f"By {esc(audit.attribute)}: no test (fewer than two groups with scored cases)."
    unit = "points" if m.unit == "%" else m.unit
    held = []
    for part in CLASS_PARTS:
        key = "gap" if part == "mean" else f"{part}_gap"
        p = s.get(f"{key}_p_holm", s.get(f"{key}_p"))
        if key in s and pd.notna(p) and p < ALPHA:
            column = part
            shown = groups[column].dropna()
            worst = shown.idxmin() if m.higher_is_better else shown.idxmax()
            best = shown.idxmax() if m.higher_is_better else shown.idxmin()
            held.append(f"{part} {m.label}: {esc(worst)} {number(abs(s[key]), m.scale)} {unit} "
                        f"{'below' if m.higher_is_better else 'above'} {esc(best)} (Holm p {p_text(p)})")
    if held:
        mean_p = s.get("gap_p_holm", s.get("gap_p"))
        rest = "" if any(h.startswith("mean ") for h in held) else \
            f" The mean {m.label} gap ({number(s['gap'], m.scale)} {unit}, Holm p {p_text(mean_p)}) is not."
        return f"By {esc(audit.attribute)}: a gap beyond noise in " + "; ".join(held) + "." + rest
    p = s.get("gap_p_holm", s.get("gap_p"))
    detectable = s.get("mdg80")
    return (f"By {esc(audit.attribute)}: no gap beyond noise (mean {m.label} gap {number(s['gap'], m.scale)} {unit}, "
            f"Holm p {p_text(p)}); detectable gap {number(detectable, m.scale)} {unit} (80 % power).")


# ----------------------------------------------------------------------------- HTML pieces
def table_html(frame: pd.DataFrame, *, index_name: str = "", row_ids=None, sortable: bool = False,
               cls: str = "") -> str:
    """A plain table of already formatted strings (frame cells); row_ids gives each row an id."""
    head = "".join(f"<th scope='col'>{esc(c)}</th>" for c in [index_name or frame.index.name or "", *frame.columns])
    rows = []
    for k, (index, row) in enumerate(frame.iterrows()):
        rid = f" id='{esc(row_ids[k])}'" if row_ids is not None else ""
        cells = "".join(f"<td>{cell_html(cell)}</td>" if NUMERIC.match(str(cell)) else
                        f"<td class='t'>{cell_html(cell)}</td>" for cell in row)
        rows.append(f"<tr{rid}><th scope='row'>{esc(index)}</th>{cells}</tr>")
    attrs = f" class='{cls}{' sortable' if sortable else ''}'"
    return (f"<div class='scroll'><table{attrs}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def group_table(audit: AttributeAudit) -> str:
    m, g = audit.metric, audit.groups
    shown = pd.DataFrame(index=g.index)
    shown.index.name = audit.attribute
    shown["n"] = [str(int(v)) if pd.notna(v) else "-" for v in g["n"]]
    for part in ("kidney", "tumor", "mean"):
        cells = []
        for v, lo, hi in zip(g[part], g.get(f"{part}_lo", pd.Series(np.nan, g.index)),
                             g.get(f"{part}_hi", pd.Series(np.nan, g.index))):
            interval = f" <span class='ci'>[{number(lo, m.scale)}, {number(hi, m.scale)}]</span>" if pd.notna(lo) else ""
            cells.append(Markup(f"{number(v, m.scale)}{interval}"))      # numbers only: built here
        shown[f"{part} {m.label}"] = cells
    cvar = [c for c in g.columns if c.startswith("cvar") and not c.endswith(("_lo", "_hi"))]
    for c in cvar:
        cells = []
        for v, lo, hi in zip(g[c], g.get(f"{c}_lo", pd.Series(np.nan, g.index)), g.get(f"{c}_hi", pd.Series(np.nan, g.index))):
            interval = f" <span class='ci'>[{number(lo, m.scale)}, {number(hi, m.scale)}]</span>" if pd.notna(lo) else ""
            cells.append(Markup(f"{number(v, m.scale)}{interval}"))
        shown[c.upper().replace("CVAR", "CVaR")] = cells
    return table_html(shown, cls="groups")


def image_html(uri: str, alt: str, cls: str = "") -> str:
    if not uri.startswith("data:image/png;base64,"):     # the page embeds its pictures; it links to nothing
        raise ValueError("report images are embedded PNG data")
    return f"<img src='{esc(uri)}' alt='{esc(alt)}' class='{esc(cls)}'>"


def anchor_of(kind: str, name: str) -> str:
    """A page anchor for a named thing (an attribute's section): its name where that is letters,
    digits, '_' and '-' (attr-sex), else those of its characters and a digest of the whole name, so
    two names never share an anchor and no anchor holds markup."""
    import hashlib

    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return f"{kind}-{name}"
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:40].strip("_") or "x"
    return f"{kind}-{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def section(anchor: str, heading: str, body: str) -> str:
    return f"<section id='{esc(anchor)}'><h2>{esc(heading)}</h2>\n{body}\n</section>"


def nav_html(items) -> str:
    """The page's links to its sections: [(anchor, text)], both escaped."""
    return "<nav>" + " · ".join(f"<a href='#{esc(a)}'>{esc(t)}</a>" for a, t in items) + "</nav>"


def absent(why: str) -> str:
    return f"<p class='absent'>{esc(why)}</p>"


# ----------------------------------------------------------------------------- the sections
def first_screen(context: ReportContext, audits, slices: pd.DataFrame | None, n_cases: int,
                 compare: bool = False) -> str:
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in
                    [*context.audited, ("cases scored", n_cases),
                     ("attributes", ", ".join(dict.fromkeys(a.attribute for a in audits)) or "none"),
                     ("metrics", ", ".join(dict.fromkeys(a.metric.label for a in audits)) or "-")])
    findings = "".join(f"<li>{finding(a)}</li>" for a in audits) or \
        "<li>No group tables in this folder" + (" (a comparison: see <a href='#compare'>the methods compared</a>)"
                                                if compare else "") + ".</li>"
    if slices is None:
        found = "<p>Discovery did not run (add <code>--discover</code>, or <code>eval.discover: true</code>).</p>"
    else:
        confirmed = slices[slices["confirmed"].astype(str).str.lower() == "true"]
        if confirmed.empty:
            found = f"<p>Discovery: no failing subgroup confirmed ({len(slices)} rules taken to a held-out test).</p>"
        else:
            items = "".join(f"<li><a href='#slice-{int(r['rank'])}'>{esc(r['rule'])}</a>: {int(r['n'])} cases, "
                            f"{esc(r.get('searched', 'mean'))} {number(r['mean'])} against {number(r['rest_mean'])} for the rest "
                            f"(held-out Holm p {p_text(r['p_holm'])})</li>" for _, r in confirmed.head(5).iterrows())
            found = f"<p>Failing subgroups confirmed on held-out cases:</p><ul>{items}</ul>"
    from fairness.recipe import THIS_MODEL

    question = ("<p class='question'>A comparison of methods: with two or more runs (seeds) of every method, its "
                "tables answer the recipe question, the seeds being the sample; with one run, only this model's.</p>"
                if compare and not audits else f"<p class='question'>{esc(THIS_MODEL)}</p>")
    return (f"<section id='summary' class='first'><h2>What was audited</h2><dl>{facts}</dl>{question}"
            f"<h2>Findings</h2><p class='note'>Each p is Holm-adjusted over the tests this audit printed "
            f"together (family-wise 5 %).</p><ul class='findings'>{findings}</ul>{found}</section>")


def attribute_section(audit: AttributeAudit) -> str:
    lines = "".join(f"<li>{esc(line)}</li>" for line in audit.lines) or "<li>(no significance lines)</li>"
    box = (image_html(figure_file(audit.box), f"per-case {audit.metric.label} by {audit.attribute}", "figure")
           if audit.box else absent("no box plot in this folder"))
    what = "" if audit.metric.name == "dice" else f" ({audit.metric.label}, {audit.metric.unit})"
    return section(anchor_of("attr", audit.name), f"By {audit.attribute}{what}",
                   f"{group_table(audit)}<ul class='lines'>{lines}</ul>{box}")


def figure_file(path: Path) -> str:
    return png_data(Path(path).read_bytes())


def ct_beside(reference_file: Path) -> Path | None:
    """The CT of a reference label map: KiTS layout (CASE/segmentation.nii.gz -> CASE/imaging.nii.gz)
    or nnU-Net's (labelsTr/CASE.nii.gz -> imagesTr/CASE_0000.nii.gz)."""
    reference_file = Path(reference_file)
    kits = reference_file.parent / "imaging.nii.gz"
    if kits.is_file():
        return kits
    stem = reference_file.name[: -len(".nii.gz")] if reference_file.name.endswith(".nii.gz") else reference_file.stem
    for folder in ("imagesTr", "imagesTs"):
        candidate = reference_file.parent.parent / folder / f"{stem}_0000.nii.gz"
        if candidate.is_file():
            return candidate
    return None


def gallery_cases(per_case: pd.DataFrame, attributes, k: int) -> list:
    """[(case_id, why)]: the k worst by mean Dice overall, then per group of each attribute, each case once."""
    scored = per_case.dropna(subset=["mean"]).sort_values(["mean", "case_id"])
    picked = {}
    for case_id in scored["case_id"].head(k):
        picked.setdefault(case_id, "worst overall")
    for attr in attributes:
        if attr not in scored:
            continue
        for group, rows in scored.groupby(attr, sort=True):
            for case_id in rows["case_id"].head(k):
                picked.setdefault(case_id, f"worst {attr} {group}")
    return list(picked.items())


def gallery_section(files: dict, per_case: pd.DataFrame, attributes, context: ReportContext) -> str:
    from data.nifti import read_volume
    from fairness.figures import case_slice

    if context.gallery_absent:
        return section("gallery", "The cases behind the numbers", absent(context.gallery_absent))
    if not files:
        return section("gallery", "The cases behind the numbers",
                       absent("no gallery: this audit scored no label-map files (a summary's scores, or tables "
                              "in the preprocessed geometry), so there is no prediction to draw"))
    cards, missing, unreadable = [], [], []
    rows = per_case.set_index("case_id")
    for case_id, why in gallery_cases(per_case, attributes, context.gallery):
        reference, prediction = files.get(case_id, (None, None))
        ct = ct_beside(reference) if reference else None
        if ct is None or prediction is None or not Path(prediction).is_file():
            missing.append(case_id)
            continue
        try:   # a picture that cannot be drawn costs the page that picture, not the audit
            ref = read_volume(reference, where=case_id)
            pred = read_volume(prediction, where=case_id, shape=ref.array.shape)
            image = read_volume(ct, where=case_id, shape=ref.array.shape)
        except CaseError as exc:
            unreadable.append(str(exc))
            continue
        row = rows.loc[case_id]
        dice = " ".join(f"{p} {number(row[p], 100)}" for p in ("kidney", "tumor", "mean") if p in row)
        fig, z = case_slice(np.asarray(image.array, np.float32), np.asarray(ref.array).astype(np.uint8),
                            np.asarray(pred.array).astype(np.uint8), ref.spacing)
        meta = ", ".join(f"{esc(c)} {esc(row[c])}" for c in attributes if c in row)
        cards.append(f"<figure class='case'><a href='#case-{esc(case_id)}'>"
                     f"{image_html(figure_data(fig), f'{case_id} axial slice {z}')}</a>"
                     f"<figcaption><a href='#case-{esc(case_id)}'>{esc(case_id)}</a> ({esc(why)}): Dice {dice}; "
                     f"{meta}; slice {z}</figcaption></figure>")
    legend = ("<p class='note'>Axial CT slice through each case's largest error, window [−79, 304] HU; "
              "<span class='ref'>reference</span> and <span class='pred'>prediction</span> contours, kidney "
              "solid and tumor dashed. A case's name links to its row of the per-case table.</p>")
    body = legend + f"<div class='gallery'>{''.join(cards)}</div>"
    if missing:
        body += absent(f"{len(missing)} case(s) not drawn: no CT beside their reference (imaging.nii.gz) or no "
                       f"prediction file: {', '.join(missing[:10])}")
    if unreadable:
        body += absent(f"{len(unreadable)} case(s) not drawn, their files unreadable: " + "; ".join(unreadable[:5]))
    if not cards and not unreadable:
        body = absent("no gallery: the reference folder holds no CT (imaging.nii.gz beside segmentation.nii.gz), "
                      "so the cases cannot be drawn")
    return section("gallery", "The cases behind the numbers", body)


def case_files(folder: Path, per_case: pd.DataFrame, files: AuditFiles | None = None) -> dict:
    """{case_id: (reference_file, prediction_file)}: the per-case table's file columns where it has
    them, else the audit's summary.json (nnU-Net's format, which names the files scored)."""
    from data.untrusted import read_json

    if set(FILE_COLUMNS) <= set(per_case.columns):
        return {c: (Path(r), Path(p)) for c, r, p in zip(per_case["case_id"], per_case["reference_file"],
                                                          per_case["prediction_file"]) if pd.notna(r) and pd.notna(p)}
    path = (files or AuditFiles(folder, None)).get("summary.json")
    if path is None:
        return {}
    out = {}
    for entry in read_json(path).get("metric_per_case", []):
        ref, pred = entry.get("reference_file"), entry.get("prediction_file")
        if ref and pred:
            name = Path(ref).name
            case_id = Path(ref).parent.name if name == "segmentation.nii.gz" else name.split(".nii")[0]
            out[case_id] = (Path(ref), Path(pred))
    return out


def slices_section(slices: pd.DataFrame | None, members: pd.DataFrame | None) -> str:
    if slices is None:
        return section("slices", "Discovered slices", absent("discovery did not run: add --discover"))
    if slices.empty:
        return section("slices", "Discovered slices", absent("no rule was taken to confirmation (too few cases)"))
    shown = pd.DataFrame(index=slices["rank"].astype(int))
    shown.index.name = "rank"
    shown["rule"] = [str(r) for r in slices["rule"]]
    shown["n"] = [str(int(v)) for v in slices["n"]]
    shown["mean"] = [number(v) for v in slices["mean"]]
    shown["rest"] = [number(v) for v in slices["rest_mean"]]
    shown["gap"] = [number(v) for v in slices["gap"]]
    shown["held-out p"] = [p_text(v) for v in slices["p"]]
    shown["Holm p"] = [p_text(v) for v in slices["p_holm"]]
    shown["confirmed"] = ["yes" if str(v).lower() == "true" else "no" for v in slices["confirmed"]]
    if "described_by" in slices:
        shown["described by"] = [v if isinstance(v, str) else "" for v in slices["described_by"]]
    member_lists = []
    for rank in shown.index:
        ids = members.loc[members["rank"] == rank, "case_id"] if members is not None else []
        links = ", ".join(f"<a href='#case-{esc(c)}'>{esc(c)}</a>" for c in ids)
        member_lists.append(f"<details id='slice-{rank}'><summary>slice {rank}: {len(ids)} members</summary>"
                            f"<p>{links}</p></details>")
    return section("slices", "Discovered slices",
                   "<p class='note'>Searched on one half of the cases, tested on the other; confirmed = Holm p "
                   "below 0.05 over every rule taken to confirmation.</p>" + table_html(shown) + "".join(member_lists))


def compare_section(folder: Path, files: AuditFiles | None = None) -> str:
    """The methods side by side, each recipe's own gap and the Δ against the baseline, each table
    saying which question it answers: this recipe (seeds as the sample) or these models (the test
    cases as the sample, when a method has one run)."""
    from fairness.recipe import PRINTED_DELTAS

    files = files or AuditFiles(folder, None)
    paths = files.glob("compare*.csv")
    if not paths:
        return ""
    parts = []
    for path in paths:
        table = pd.read_csv(path, index_col=0)
        attrs = [c[3:] for c in table.columns if c.startswith("sd_") and not c.endswith("_std")]
        shown = pd.DataFrame(index=table.index.astype(str))
        shown.index.name = "method"
        shown["seeds"] = [number(v, 1, 0) for v in table["seeds"]]
        for col in [*CLASS_PARTS, *(f"{f}_{a}" for a in attrs for f in ("sd", "ser"))]:
            if col not in table:
                continue
            digits = 1 if col in CLASS_PARTS else 2
            std = table.get(f"{col}_std")
            shown[col] = [number(v, 1, digits) + (f" ± {number(s, 1, digits)}" if std is not None and pd.notna(s) else "")
                          for v, s in zip(table[col], std if std is not None else [np.nan] * len(table))]
        parts.append(f"<h3>{esc(path.stem)}: mean ± std over seeds</h3>" + table_html(shown))
        for attr in attrs:
            gaps = pd.DataFrame(index=table.index.astype(str))
            gaps.index.name = "method"
            for part in CLASS_PARTS:
                key = f"recipe_gap_{part}_{{}}{attr}"
                if key.format("") not in table:
                    continue
                gaps[f"{part} gap"] = [_recipe_cell(table, m, key.format(""), key.format("lo_"), key.format("hi_"),
                                                    key.format("p_holm_")) for m in table.index]
            if len(gaps.columns):
                parts.append(f"<h3>Each recipe's own gap by {esc(attr)} (this recipe: the seeds and the test cases "
                             "are the sample)</h3>" + table_html(gaps))
        if "question" not in table:
            continue
        deltas = table[table["question"].notna()]
        recipe = (deltas["question"] == "recipe").all()
        for attr in attrs:
            d = pd.DataFrame(index=deltas.index.astype(str))
            d.index.name = "method"
            if recipe:
                for part, stat in PRINTED_DELTAS:
                    pre = "" if part == "mean" else f"{part}_"
                    d[f"Δ {'' if part == 'mean' else part + ' '}{stat}"] = [
                        _recipe_cell(deltas, m, f"{pre}delta_{stat}_{attr}", f"{pre}delta_{stat}_lo_{attr}",
                                     f"{pre}delta_{stat}_hi_{attr}", f"{pre}p_{stat}_holm_{attr}") for m in deltas.index]
                holm = [f"{'' if part == 'mean' else part + '_'}p_{stat}_holm_{attr}" for part, stat in PRINTED_DELTAS]
                title = (f"This recipe against the baseline's, by {esc(attr)}: the seeds are the sample (Welch across "
                         "seeds, the test cases' sampling added; Holm over the screen)")
            else:
                for stat in ("mean", "sd", "ser", "worst"):
                    d[f"Δ {stat}"] = [_recipe_cell(deltas, m, f"model_delta_{stat}_{attr}", f"model_delta_{stat}_lo_{attr}",
                                                   f"model_delta_{stat}_hi_{attr}", f"model_p_{stat}_holm_{attr}")
                                      for m in deltas.index]
                holm = [f"model_p_{stat}_holm_{attr}" for stat in ("mean", "sd")]
                title = (f"These models against the baseline's, by {esc(attr)}: the test cases are the sample and the "
                         "trained models fixed; not a claim about the recipes (a method has one run)")
            beyond = sorted({m for c in holm if c in deltas for m, v in deltas[c].items() if pd.notna(v) and v < ALPHA})
            sentence = (f"Beyond noise after Holm: {', '.join(map(esc, map(str, beyond)))}." if beyond
                        else "No difference from the baseline is beyond noise after Holm.")
            parts.append(f"<h3>{title}</h3>" + table_html(d) + f"<p>{sentence}</p>")
    for fig in files.glob("tradeoff_*.png"):
        parts.append(image_html(figure_file(fig), fig.stem.replace("_", " "), "figure"))
    return section("compare", "Methods compared", "".join(parts))


def _recipe_cell(table: pd.DataFrame, method, value: str, lo: str, hi: str, holm: str) -> str:
    """'+1.2 [-0.3, +2.7] (Holm p 0.210)' from a compare.csv row, '-' where there is no value."""
    v = table.loc[method].get(value, np.nan)
    if pd.isna(v):
        return "-"
    a, b, p = (table.loc[method].get(c, np.nan) for c in (lo, hi, holm))
    interval = f" [{a:+.2f}, {b:+.2f}]" if pd.notna(a) and pd.notna(b) else ""
    return f"{v:+.2f}{interval}" + (f" (Holm p {p_text(p)})" if pd.notna(p) else " (no test)")


def per_case_section(per_case: pd.DataFrame) -> str:
    frame = per_case.copy()
    ids = [f"case-{c}" for c in frame["case_id"]]
    frame = frame.set_index("case_id")
    shown = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            scale = 100 if col in CLASS_PARTS else 1
            shown[col] = [number(v, scale, 1 if scale == 100 else 3) for v in values]
        else:
            shown[col] = [str(v) if pd.notna(v) else "-" for v in values]
    return section("cases", "Every case", "<p class='note'>Dice in %. Click a column heading to sort (with "
                   "script; without it the table reads as it is).</p>" +
                   table_html(shown, index_name="case_id", row_ids=ids, sortable=True, cls="cases"))


def footer(context: ReportContext) -> str:
    items = [("command", context.command), ("git commit", context.commit), ("config digest", context.config_digest),
             ("seeds", context.seeds), ("n-boot", context.n_boot), ("n-perm", context.n_perm),
             ("date", context.date)]
    return "<footer><dl>" + "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in items
                                    if v not in (None, "")) + "</dl></footer>"


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;color:#1a1a1a;background:#fff}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:2px}
h3{font-size:1.05em}.first{background:#f5f7fa;border:1px solid #dde3ea;border-radius:6px;padding:4px 14px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dt{font-weight:600}dd{margin:0}
.findings li{margin:4px 0}.note{color:#555;font-size:.9em}.absent{color:#8a5a00;font-style:italic}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.88em;margin:6px 0}
th,td{border:1px solid #d5d9de;padding:3px 7px;text-align:right;white-space:nowrap}
thead th{background:#eef1f4;position:sticky;top:0}tbody th{text-align:left}
.ci{color:#666;font-size:.9em}td.t{text-align:left}.sortable thead th{cursor:pointer}
tr:target{background:#fff3c4}.figure{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.case{margin:0;width:230px}.case img{width:100%;height:auto}
figcaption{font-size:.8em}.ref{color:#00a040;font-weight:600}.pred{color:#e0102f;font-weight:600}
footer{margin-top:24px;border-top:1px solid #ddd;font-size:.85em;color:#444}code{word-break:break-all}
@media (max-width:600px){body{font-size:14px;padding:6px}.case{width:100%}dl{grid-template-columns:1fr}}
"""

# Sorting is an extra: the table is complete without it. A click on a heading sorts by that
# column, numbers as numbers, a second click reverses; report.html#sort=mean opens sorted by mean.
SORT_SCRIPT = """
function sortBy(t,i,up){var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  function key(r){var c=r.cells[i].textContent.trim(),v=parseFloat(c);return isNaN(v)?c:v;}
  rows.sort(function(a,b){var x=key(a),y=key(b);if(typeof x===typeof y){return (x<y?-1:x>y?1:0)*(up?1:-1);}
    return typeof x==='number'?-1:1;});
  rows.forEach(function(r){body.appendChild(r);});}
document.querySelectorAll('table.sortable').forEach(function(t){
  var heads=t.querySelectorAll('thead th');
  heads.forEach(function(th,i){th.addEventListener('click',function(){
    var up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';sortBy(t,i,up);});
    if(location.hash==='#sort='+th.textContent.trim()){th.dataset.dir='up';sortBy(t,i,true);}});});
"""


def build_html(folder: Path, context: ReportContext, per_case: pd.DataFrame | None = None,
               written: set | None = None) -> str:
    """The page (module docstring). per_case: the audit's per-case table as it is about to be written
    (per_case.csv is written last, as the folder's finished mark); default: folder/per_case.csv.
    written: the files this audit wrote (AuditFiles); None reads what the folder holds."""
    folder = Path(folder)
    audit_files = AuditFiles(folder, written)
    if per_case is None:
        source = audit_files.get("per_case.csv")
        per_case = pd.read_csv(source) if source else pd.DataFrame(columns=["case_id", "mean"])
    per_case = per_case.copy()
    per_case["case_id"] = per_case["case_id"].astype(str)
    files = case_files(folder, per_case, audit_files)
    per_case = per_case.drop(columns=[c for c in FILE_COLUMNS if c in per_case])
    audits = read_audits(folder, audit_files)
    for audit in audits:
        audit.lines = audit.lines or list(context.lines.get(audit.name, []))
    slices = pd.read_csv(audit_files.get("slices.csv")) if audit_files.get("slices.csv") else None
    members = pd.read_csv(audit_files.get("slice_members.csv"), dtype={"case_id": str}) \
        if audit_files.get("slice_members.csv") else None
    attributes = list(dict.fromkeys(a.attribute for a in audits))
    nav = [("summary", "Findings"), *[(anchor_of("attr", a.name), a.name) for a in audits], ("gallery", "Cases"),
           ("slices", "Slices")]
    compare = compare_section(folder, audit_files)
    if compare:
        nav.append(("compare", "Methods"))
    nav.append(("cases", "Every case"))
    context.date = context.date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{esc(context.title)}</h1>",
            nav_html(nav),
            first_screen(context, audits, slices, len(per_case), compare=bool(compare)),
            *[attribute_section(a) for a in audits],
            gallery_section(files, per_case, attributes, context) if len(per_case) or context.gallery_absent else
            section("gallery", "The cases behind the numbers", absent("no per-case table in this folder")),
            slices_section(slices, members), compare,
            per_case_section(per_case) if len(per_case) else
            section("cases", "Every case", absent("no per-case table in this folder (a comparison: each method's "
                                                  "audit folder has its own)")),
            footer(context)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(context.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


def write_html_report(folder, context: ReportContext, per_case: pd.DataFrame | None = None) -> Path:
    """folder/report.html from this audit's files in folder (module docstring: the files the running
    audit wrote, data/atomic.written_in, when one is recording); its path."""
    from data.atomic import write_text, written_in

    path = Path(folder) / REPORT_NAME
    write_text(path, build_html(folder, context, per_case, written=written_in(folder)))
    return path


def config_digest(settings) -> str:
    """The first 16 hex digits of the SHA-256 of the settings as canonical JSON: two audits with the
    same digest ran with the same configuration."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
