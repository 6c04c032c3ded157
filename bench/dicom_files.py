"""Synthetic CT images as DICOM Part-10 files, for C-STORE benchmarks (no pydicom needed).

    .venv/bin/python bench/dicom_files.py OUTDIR [--count 200] [--size 512]

Each file: a 128-byte preamble, "DICM", the file meta group (0002) and a CT Image Storage data
set, both Explicit VR Little Endian; 16-bit pixels (12 stored), 512×512 → 0.52 MB a file. One
study, one series, one SOP Instance UID per image. `/usr/bin/dcmdump FILE` reads them and dcmtk's
storescu sends them.
"""

from __future__ import annotations

import argparse
import struct
import sys
import uuid
from array import array
from pathlib import Path

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = "2.25.169287397391958254271950151417633208741"  # this generator's own
LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def new_uid() -> str:
    """A UUID-derived UID (PS3.5 §B.2): at most 44 characters."""
    return f"2.25.{uuid.uuid4().int}"


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element; odd values padded (UI with NUL, text with space)."""
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def pixel_pattern(size: int) -> bytes:
    """size×size 12-bit values (in 16-bit words): rings and a ramp, so no two rows are equal."""
    half = size // 2
    words = array("H", bytes(size * size * 2))
    for y in range(size):
        dy = (y - half) * (y - half)
        row = y * size
        for x in range(size):
            words[row + x] = ((dy + (x - half) * (x - half)) // 7 + x + 3 * y) & 0x0FFF
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()


def ct_file(
    sop_uid: str, study: str, series: str, number: int, pixels: bytes, size: int, patient: str
) -> bytes:
    """A CT Image Storage Part-10 file with the given pixels (size×size, 2 bytes each)."""
    if len(pixels) != size * size * 2:
        raise ValueError("pixel data does not match the image size")
    meta_body = b"".join(
        [
            element(0x0002, 0x0001, b"OB", b"\0\1"),
            element(0x0002, 0x0002, b"UI", CT_IMAGE_STORAGE.encode()),
            element(0x0002, 0x0003, b"UI", sop_uid.encode()),
            element(0x0002, 0x0010, b"UI", EXPLICIT_VR_LE.encode()),
            element(0x0002, 0x0012, b"UI", IMPLEMENTATION_UID.encode()),
            element(0x0002, 0x0013, b"SH", b"PACSLB_BENCH"),
        ]
    )
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    dataset = b"".join(
        [
            element(0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE.encode()),
            element(0x0008, 0x0018, b"UI", sop_uid.encode()),
            element(0x0008, 0x0020, b"DA", b"20260101"),
            element(0x0008, 0x0060, b"CS", b"CT"),
            element(0x0010, 0x0010, b"PN", b"BENCH^PACSLB"),
            element(0x0010, 0x0020, b"LO", patient.encode()),
            element(0x0020, 0x000D, b"UI", study.encode()),
            element(0x0020, 0x000E, b"UI", series.encode()),
            element(0x0020, 0x0013, b"IS", str(number).encode()),
            element(0x0028, 0x0002, b"US", us(1)),
            element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
            element(0x0028, 0x0010, b"US", us(size)),
            element(0x0028, 0x0011, b"US", us(size)),
            element(0x0028, 0x0100, b"US", us(16)),
            element(0x0028, 0x0101, b"US", us(12)),
            element(0x0028, 0x0102, b"US", us(11)),
            element(0x0028, 0x0103, b"US", us(0)),
            element(0x0028, 0x1052, b"DS", b"-1024"),
            element(0x0028, 0x1053, b"DS", b"1"),
            element(0x7FE0, 0x0010, b"OW", pixels),
        ]
    )
    return b"\0" * 128 + b"DICM" + meta + dataset


def write_ct_series(outdir: Path, count: int = 200, size: int = 512) -> list[Path]:
    """`count` CT images of one series in `outdir` (created); returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    base = pixel_pattern(size)
    study, series = new_uid(), new_uid()
    paths = []
    for i in range(count):
        shift = (i * 2 * size) % len(base)  # each image a little different: rows rotated
        pixels = base[shift:] + base[:shift]
        path = outdir / f"CT{i + 1:04d}.dcm"
        path.write_bytes(ct_file(new_uid(), study, series, i + 1, pixels, size, "BENCH0001"))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    args = parser.parse_args(argv)
    paths = write_ct_series(args.outdir, args.count, args.size)
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {total / 1e6:.1f} MB in {args.outdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
