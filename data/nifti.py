"""NIfTI I/O in KiTS19's convention.

KiTS19's files store the array as (z, y, x) and their header zooms give the spacing in the same
(z, y, x) order, with a non-standard affine (SPEC §1). We never reinterpret that affine: spacing
comes from the header zooms, and the original affine and header travel with the array so that
anything written back lands in the original geometry.

Usage:
    vol = read_volume("case_00000/segmentation.nii.gz")      # the voxel limit checked first
    pred = read_volume("pred/case_00000.nii.gz", shape=vol.array.shape)   # refused unread if it differs
    vol.array.shape, vol.spacing          # (611, 512, 512), (0.5, 0.919, 0.919)
    shape, spacing, affine = read_geometry("case_00000/imaging.nii.gz")   # the header only
    write_volume("pred.nii.gz", labels, affine=vol.affine, header=vol.header)
    kits_affine((3.0, 0.8, 0.8))          # the affine KiTS19 would write for that spacing
"""
from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from data.atomic import atomic_write
from data.errors import CaseError
from data.untrusted import check_voxels


@dataclass
class Volume:
    array: np.ndarray            # (z, y, x)
    spacing: tuple[float, float, float]  # mm, (z, y, x), from the header zooms
    affine: np.ndarray           # 4 x 4, as stored
    header: nib.Nifti1Header


def kits_affine(spacing) -> np.ndarray:
    """The affine KiTS19 stores for an array (z, y, x) with spacing (z, y, x)."""
    sz, sy, sx = (float(s) for s in spacing)
    return np.array([[0.0, 0.0, -sx, 0.0],
                     [0.0, -sy, 0.0, 0.0],
                     [-sz, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


@contextmanager
def _quiet_nibabel():
    """nibabel logs the header repairs it makes to stderr; we report the problem ourselves."""
    logger = logging.getLogger("nibabel.global")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _stored_zooms(img) -> tuple[float, ...]:
    """The header's zooms as written in the file.

    nibabel's load "fixes" a zero zoom to 1 and a negative one to its absolute value (with a log
    line): a volume would then be resampled with a spacing nobody wrote. Read the raw header.
    """
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if "pixdim" not in img.header:
        return zooms
    holder = img.file_map.get("header", img.file_map["image"])
    try:
        with ImageOpener(holder.filename) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        return tuple(float(z) for z in raw["pixdim"][1:4])
    except Exception:  # the loaded header is then the best we have
        return zooms


AFFINE_TOLERANCE = 1e-3      # mm: qform and sform may differ by rounding (the qform stores a quaternion)


def check_orientation(img, path: Path, where: str) -> None:
    """CaseError when the header says two things: a qform and an sform both set (code > 0) that
    disagree beyond AFFINE_TOLERANCE. Tools differ on which one they read (nibabel and ITK prefer
    the sform, others the qform), so such a file is scored differently by each: refused, naming
    both, rather than scored by one rule the file's writer may not have meant."""
    header = img.header
    if not hasattr(header, "get_qform"):
        return
    qform, q_code = header.get_qform(coded=True)
    sform, s_code = header.get_sform(coded=True)
    if qform is None or sform is None or not q_code or not s_code:
        return
    if not np.allclose(qform, sform, atol=AFFINE_TOLERANCE, rtol=0):
        fmt = lambda a: "[" + "; ".join(" ".join(f"{v:g}" for v in row[:3]) for row in a[:3]) + "]"  # noqa: E731
        raise CaseError(where, f"{path.name}: its qform (code {int(q_code)}, {fmt(qform)}) and sform (code "
                               f"{int(s_code)}, {fmt(sform)}) disagree; tools read one or the other, so it is not "
                               "scored: rewrite it with one orientation (e.g. nibabel: img.set_qform(img.get_sform()))")


def _open(path: Path, where: str):
    """(the nibabel image, its spacing) of a 3D NIfTI, header only: the voxels are not read yet."""
    if not path.is_file():
        raise CaseError(where, f"missing file {path}")
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad file
        raise CaseError(where, f"{path.name} is not a readable NIfTI file ({type(exc).__name__}: {exc})")
    if len(img.shape) != 3:
        raise CaseError(where, f"{path.name} has shape {tuple(img.shape)}; expected a 3D volume")
    check_voxels(img.shape, where if where != str(path) else str(path))   # before a byte of data is read
    check_orientation(img, path, where)
    zooms = _stored_zooms(img)
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        shown = ", ".join(f"{z:g}" for z in zooms)
        raise CaseError(where, f"{path.name} has invalid spacing ({shown}) in its header (zooms must be "
                        "finite and positive)")
    return img, zooms


def read_geometry(path, where: str | None = None) -> tuple[tuple[int, ...], tuple[float, float, float], np.ndarray]:
    """(shape, spacing, affine) from the header alone, the same values read_volume gives."""
    path = Path(path)
    img, zooms = _open(path, where or str(path))
    return tuple(int(n) for n in img.shape), zooms, img.affine.copy()


def read_volume(path, dtype=None, where: str | None = None, *, shape=None) -> Volume:
    """Read a 3D NIfTI; raise CaseError (naming `where` or the file) for anything unreadable.

    The header's shape is checked before the data are read: against the voxel limit
    (data/untrusted.py) always, and against `shape` when given (a prediction against its
    reference), so a header or gzip bomb is refused without inflating it.
    """
    path = Path(path)
    where = where or str(path)
    img, zooms = _open(path, where)
    if shape is not None and tuple(int(n) for n in img.shape) != tuple(int(n) for n in shape):
        raise CaseError(where, f"{path.name} has shape {tuple(int(n) for n in img.shape)}, its reference "
                               f"{tuple(int(n) for n in shape)}; not reading it")
    try:
        proxy = img.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        if (slope, inter) != (1.0, 0.0) and np.isfinite(slope) and np.isfinite(inter):
            # Scaled integers: decode straight to float32, never through a float64 copy.
            array = img.get_fdata(dtype=np.float32)
        else:
            array = np.asanyarray(proxy)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise CaseError(where, f"{path.name} is truncated or corrupt ({type(exc).__name__}: {exc})")
    return Volume(array=array, spacing=zooms, affine=img.affine.copy(), header=img.header.copy())


def write_volume(path, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None,
                 spacing=None) -> None:
    """Write atomically (temp name, then rename) so a killed writer never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine, header=header)
    img.set_data_dtype(np.asarray(array).dtype)
    if spacing is not None:
        img.header.set_zooms(tuple(float(s) for s in spacing))
    # nibabel picks the format (and compression) from the extension, so the temporary keeps it
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)), suffix=".nii.gz" if path.name.endswith(".gz") else ".nii")
