"""Changing an instance's transfer syntax on the way out, when a client asks for one.

Objects are archived as received. A client that names a transfer syntax in
its Accept header (PS3.18 §8.7.3) gets the stored bytes when they already
match, else a copy decoded with pydicom's decoders and re-encoded with a
well-kept encoder: pydicom's own (RLE, with the pylibjpeg-rle plugin when
present), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000), Pillow's libjpeg
(JPEG baseline, 8-bit only) and imagecodecs' libjpeg-turbo (JPEG lossless,
process 14 with predictor 1, which is valid for both lossless JPEG syntaxes).
"""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO

import imagecodecs
import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
BY_PYDICOM = {RLELossless, JPEGLSLossless, JPEG2000Lossless}  # Dataset.compress knows these
BY_LIBJPEG = {JPEGBaseline8Bit, JPEGLossless, JPEGLosslessSV1}
TARGETS = NATIVE | BY_PYDICOM | BY_LIBJPEG
BASELINE_QUALITY = 90  # libjpeg quality for JPEG baseline copies: visually lossless for 8-bit images


class CannotTranscode(ValueError):
    """The instance cannot be given in the asked transfer syntax; the message says why."""


def check(source: str | None, target: str, bits_allocated: int | None = None) -> None:
    """Raise :class:`CannotTranscode` unless an instance stored in `source` can be served in `target`.

    With `source` ``None``, whether `target` can be produced at all.
    `bits_allocated`, when known, rules out JPEG baseline for data deeper than 8 bits.
    """
    if source == target:
        return
    syntax = UID(target)
    if target not in TARGETS:
        kind = f"{syntax.name} ({target})" if syntax.is_transfer_syntax else repr(target)
        raise CannotTranscode(f"transfer syntax {kind} cannot be produced here; "
                              f"these can: {', '.join(sorted(TARGETS))}")
    if syntax in BY_PYDICOM and not get_encoder(syntax).is_available:
        raise CannotTranscode(f"no encoder for {syntax.name} is installed")
    if target == JPEGBaseline8Bit and bits_allocated not in (None, 8):
        raise CannotTranscode(f"JPEG baseline holds 8-bit pixels only; the instance has {bits_allocated}")
    if source is None or not UID(source).is_compressed:
        return
    try:
        available = get_decoder(UID(source)).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise CannotTranscode(f"pixel data in {UID(source).name} cannot be decoded here")


def can_transcode(source: str | None, target: str, bits_allocated: int | None = None) -> bool:
    """Whether :func:`check` passes."""
    try:
        check(source, target, bits_allocated)
    except CannotTranscode:
        return False
    return True


def transcoded(chunks: Iterable[bytes], target: str) -> bytes:
    """The Part-10 object in `chunks`, re-encoded in `target` (one of :data:`TARGETS`).

    Raises
    ------
    CannotTranscode
        If the pixel data does not suit `target` (e.g. 16-bit pixels for JPEG baseline).
    """
    ds = dcmread(BytesIO(b"".join(chunks)))
    if ds.file_meta.TransferSyntaxUID == target:
        ds.save_as(out := BytesIO(), enforce_file_format=True)
        return out.getvalue()
    check(ds.file_meta.TransferSyntaxUID, target, ds.get("BitsAllocated"))
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    syntax = UID(target)
    if "PixelData" in ds and syntax in BY_PYDICOM:
        try:
            ds.compress(syntax, generate_instance_uid=False)
        except (ValueError, RuntimeError) as exc:
            raise CannotTranscode(f"{syntax.name}: {exc}") from None
    elif "PixelData" in ds and syntax in BY_LIBJPEG:
        pixels = ds.pixel_array
        stack = pixels if int(ds.get("NumberOfFrames") or 1) > 1 else pixels[np.newaxis]
        frames = [_libjpeg(frame, ds, syntax) for frame in stack]
        if int(ds.get("SamplesPerPixel") or 1) == 3:
            ds.PhotometricInterpretation = "RGB"  # pixel_array gave RGB; baseline relabels below
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        if target == JPEGBaseline8Bit:
            _mark_lossy(ds, frames)
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return out.getvalue()


def encoded_frame(frame: np.ndarray, ds: Dataset, target: str) -> bytes:
    """One decoded frame (as pydicom's ``pixel_array`` gives it) as a `target` bitstream.

    `ds` describes the pixels (rows, columns, bits, sign); colour frames are RGB.

    Raises
    ------
    CannotTranscode
        If the pixel data does not suit `target`, or `target` is not a compressed target.
    """
    syntax = UID(target)
    check(None, target, ds.get("BitsAllocated"))
    samples = int(ds.get("SamplesPerPixel") or 1)
    if syntax in BY_PYDICOM:
        try:
            return bytes(get_encoder(syntax).encode(
                frame, rows=frame.shape[0], columns=frame.shape[1], samples_per_pixel=samples,
                bits_allocated=int(ds.BitsAllocated), bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
                pixel_representation=int(ds.get("PixelRepresentation") or 0), number_of_frames=1,
                photometric_interpretation="RGB" if samples == 3 else str(ds.PhotometricInterpretation),
                planar_configuration=0))
        except (ValueError, RuntimeError) as exc:
            raise CannotTranscode(f"{syntax.name}: {exc}") from None
    if syntax in BY_LIBJPEG:
        return _libjpeg(frame, ds, syntax)
    raise CannotTranscode(f"{syntax.name} is not a compressed transfer syntax")


def _libjpeg(frame: np.ndarray, ds: Dataset, syntax: UID) -> bytes:
    """One frame as a JPEG bitstream: baseline through Pillow, lossless through imagecodecs."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if syntax == JPEGBaseline8Bit:
        if frame.dtype.itemsize != 1 or ds.get("PixelRepresentation"):
            raise CannotTranscode("JPEG baseline holds unsigned 8-bit pixels only")
        out = BytesIO()
        # 4:2:2 chroma subsampling, as the YBR_FULL_422 label set for colour copies says (PS3.5 §8.2.1).
        Image.fromarray(frame, "RGB" if samples == 3 else "L").save(
            out, "JPEG", quality=BASELINE_QUALITY, subsampling=1)
        return out.getvalue()
    stored = int(ds.get("BitsStored") or frame.dtype.itemsize * 8)
    if stored < 2 or stored > 16:
        raise CannotTranscode(f"JPEG lossless holds 2 to 16 bits per sample; the instance stores {stored}")
    # Signed pixels go in as their bits-stored two's complement pattern; decoders
    # sign-extend them again by Pixel Representation (PS3.5 §8.2.1).
    unsigned = frame.astype(np.int64) & ((1 << stored) - 1)
    dtype = np.uint8 if stored <= 8 else np.uint16
    colour = "RGB" if samples == 3 else None  # no colour transform: lossless means the samples as they are
    return bytes(imagecodecs.jpeg8_encode(unsigned.astype(dtype), lossless=True, predictor=1, bitspersample=stored,
                                          colorspace=colour, outcolorspace=colour))


def _mark_lossy(ds: Dataset, frames: list[bytes]) -> None:
    """Record the lossy copy in the data set (PS3.3 C.7.6.1.1.5) and name its colour space."""
    if int(ds.get("SamplesPerPixel") or 1) == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    native = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * len(frames)
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [f"{native / max(sum(map(len, frames)), 1):.2f}"]
    ds.LossyImageCompressionMethod = ["ISO_10918_1"]

