"""Rendering archived images for people: pixels to an 8-bit picture, encoded as JPEG, PNG or GIF.

The grayscale pipeline is PS3.4 Annex N.2's: the modality LUT (Rescale Slope
and Intercept, or a Modality LUT Sequence), then the VOI LUT — a window the
client names, else the instance's first window, else its VOI LUT Sequence,
else the frame's own range — then inversion for MONOCHROME1. Colour images
come out of pydicom's decoders as RGB (YBR converted, palettes applied).
The region and viewport of PS3.18 §8.3.5.1.3 follow; text is burned in last.
Pillow encodes; numpy does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder

FUNCTIONS = {"linear", "linear_exact", "sigmoid"}  # PS3.3 C.11.2.1.3, as PS3.18 §8.3.5.1.4 names them
ANNOTATIONS = {"patient", "technique"}
ENCODINGS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
DEFAULT_QUALITY = 90
FRAME_TIME_MS = 100  # between GIF frames when the instance gives no Frame Time


class RenderError(ValueError):
    """A rendering parameter is malformed, or the instance has nothing to render; the message says which."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre, width and function."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """The output size and, optionally, the source region ``(sx, sy, sw, sh)`` to show (PS3.18 §8.3.5.1.3).

    A negative `sw` or `sh` flips the region horizontally or vertically.
    """

    width: int
    height: int
    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Rendering:
    """How to render: every PS3.18 §8.3.5.1 parameter this archive supports."""

    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    annotation: frozenset[str] = field(default_factory=frozenset)


def parse(window: str | None = None, viewport: str | None = None, quality: str | None = None,
          annotation: str | None = None) -> Rendering:
    """A :class:`Rendering` from the query parameters' text.

    Raises
    ------
    RenderError
        Naming the parameter that is malformed.
    """
    return Rendering(
        window=_window(window) if window is not None else None,
        viewport=_viewport(viewport) if viewport is not None else None,
        quality=_quality(quality) if quality is not None else DEFAULT_QUALITY,
        annotation=_annotation(annotation) if annotation is not None else frozenset(),
    )


def _numbers(raw: str, parameter: str, count: Iterable[int]) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        values = []
    if len(values) not in count or not all(math.isfinite(v) for v in values):
        raise RenderError(f"{parameter}={raw!r} is not {' or '.join(map(str, count))} comma-separated numbers",
                          parameter)
    return values


def _window(raw: str) -> Window:
    parts = raw.split(",")
    function = parts[2].strip().lower() if len(parts) == 3 else "linear"
    if function not in FUNCTIONS:
        raise RenderError(f"window function {function!r} is not one of {', '.join(sorted(FUNCTIONS))}", "window")
    center, width = _numbers(",".join(parts[:2]), "window", (2,))
    if width < (1 if function == "linear" else 0) or width == 0:
        raise RenderError(f"window width {width:g} is too small for {function} (PS3.3 C.11.2.1.2)", "window")
    return Window(center, width, function)


def _viewport(raw: str) -> Viewport:
    values = _numbers(raw, "viewport", (2, 6))
    width, height = values[:2]
    if not (width.is_integer() and height.is_integer() and 1 <= width <= 8192 and 1 <= height <= 8192):
        raise RenderError(f"viewport size {raw!r}: width and height must be whole numbers from 1 to 8192",
                          "viewport")
    region = None
    if len(values) == 6:
        sx, sy, sw, sh = values[2:]
        if sx < 0 or sy < 0 or sw == 0 or sh == 0:
            raise RenderError(f"viewport region {raw!r}: sx, sy must not be negative nor sw, sh zero", "viewport")
        region = (sx, sy, sw, sh)
    return Viewport(int(width), int(height), region)


def _quality(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise RenderError(f"quality={raw!r} is not a whole number from 1 to 100", "quality")
    return int(raw)


def _annotation(raw: str) -> frozenset[str]:
    wanted = frozenset(a.strip().lower() for a in raw.split(",") if a.strip())
    if not wanted or not wanted <= ANNOTATIONS:
        raise RenderError(f"annotation={raw!r}: use patient, technique or both", "annotation")
    return wanted


def frame_count(ds: Dataset) -> int:
    """How many frames an image data set holds."""
    return int(ds.get("NumberOfFrames") or 1)


def render(blob: bytes, frames: list[int] | None, rendering: Rendering, media_type: str) -> bytes:
    """The Part-10 object `blob` rendered as `media_type`.

    `frames` are 1-based frame numbers (all in range); ``None`` means every
    frame for ``image/gif`` and the first otherwise. Several frames make an
    animated GIF; the still types show the first of them.

    Raises
    ------
    RenderError
        If the object has no pixel data.
    """
    try:
        described = dcmread(BytesIO(blob))  # once: the decoder takes each frame from it
        if "Rows" not in described or "PixelData" not in described:
            raise RenderError("the instance has no image to render")
        if frames is None:
            frames = list(range(1, frame_count(described) + 1)) if media_type == "image/gif" else [1]
        if media_type != "image/gif":
            frames = frames[:1]
        decoder = get_decoder(described.file_meta.TransferSyntaxUID)
        pictures = [picture(decoder.as_array(described, index=n - 1)[0], described, rendering, n) for n in frames]
    except (AttributeError, KeyError, NotImplementedError) as exc:
        raise RenderError(f"the instance has no image to render ({exc})") from None
    return encode(pictures, media_type, rendering.quality, described)


def picture(pixels: np.ndarray, ds: Dataset, rendering: Rendering, frame: int = 1) -> Image.Image:
    """One decoded frame as an 8-bit Pillow image: LUTs, region, viewport and annotations applied."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        if pixels.dtype != np.uint8:  # 16-bit palette entries
            pixels = (pixels >> 8).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
    elif pixels.ndim == 3:
        image = Image.fromarray(_bytes(pixels, ds), "RGB")
    else:
        grey = _grey(pixels, ds, rendering.window)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey, "L")
    image = _viewport_applied(image, rendering.viewport)
    if rendering.annotation:
        _annotate(image, ds, rendering, frame)
    return image


def _bytes(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour samples scaled to 8 bits."""
    stored = int(ds.get("BitsStored") or 8)
    if pixels.dtype == np.uint8 and stored <= 8:
        return pixels
    return (pixels.astype(np.float64) * 255 / ((1 << stored) - 1)).clip(0, 255).astype(np.uint8)


def _grey(pixels: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Stored values to 0-255 through the modality and VOI LUTs.

    Integer frames go through one lookup table built over their range of
    stored values (at most 65,536 entries for 16-bit data): a 512x512 slice
    is then one indexing pass instead of float arithmetic on every pixel.
    """
    if pixels.dtype.kind in "iu":
        low, high = int(pixels.min()), int(pixels.max())
        if high - low <= 1 << 16:
            domain = np.arange(low, high + 1, dtype=np.int64)
            table = _voi(apply_modality_lut(domain, ds).astype(np.float64), ds, window)
            return table[pixels.astype(np.int32) - low]
    return _voi(apply_modality_lut(pixels, ds).astype(np.float64), ds, window)


def _voi(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Modality values to 0-255 through the VOI LUT (PS3.3 C.11.2.1.2)."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = Window(_first(ds.WindowCenter), _first(ds.WindowWidth),
                        str(ds.get("VOILUTFunction") or "linear").lower())
        if window.function not in FUNCTIONS or window.width <= 0:
            window = Window(window.center, max(window.width, 1.0))
    if window is None and "VOILUTSequence" in ds:
        values = apply_voi(values, ds, index=0).astype(np.float64)
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = Window((low + high) / 2, max(high - low, 1.0), "linear_exact")
    c, w = window.center, window.width
    if window.function == "sigmoid":
        out = 255 / (1 + np.exp(-4 * (values - c) / w))
    elif window.function == "linear_exact":
        out = ((values - c) / w + 0.5) * 255
    else:
        out = ((values - (c - 0.5)) / max(w - 1, 1) + 0.5) * 255
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a multi-valued DS (several windows: the first is the default, PS3.3 C.11.2.1.2)."""
    return float(value[0] if isinstance(value, MultiValue) else value)


def _viewport_applied(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop to the source region (flipping for negative extents), then fit the viewport keeping aspect ratio."""
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        corners = (min(sx, sx + sw), min(sy, sy + sh), max(sx, sx + sw), max(sy, sy + sh))
        left, top, right, bottom = (int(round(min(max(v, 0), limit))) for v, limit in
                                    zip(corners, (image.width, image.height) * 2))
        box = (left, top, right, bottom)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RenderError(f"viewport region {viewport.region} lies outside the {image.width}x{image.height} "
                              f"image", "viewport")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image


def _annotate(image: Image.Image, ds: Dataset, rendering: Rendering, frame: int) -> None:
    """Burn patient and technique text into the top corners (PS3.18 §8.3.5.1.1).

    Text is drawn in Pillow's bundled font, which has Latin glyphs only: a
    person name shows its alphabetic group.
    """
    font = ImageFont.load_default(size=max(10, image.height // 32))
    draw = ImageDraw.Draw(image)
    fill, outline = (255, 0) if image.mode == "L" else ((255, 255, 255), (0, 0, 0))
    if "patient" in rendering.annotation:
        name = ds.get("PatientName")
        text = "\n".join(v for v in (
            str(name.components[0] if name is not None and name.components else name or ""),
            str(ds.get("PatientID", "")), str(ds.get("PatientBirthDate", "")), str(ds.get("PatientSex", ""))) if v)
        draw.multiline_text((4, 4), text, font=font, fill=fill, stroke_width=1, stroke_fill=outline)
    if "technique" in rendering.annotation:
        window = rendering.window
        lines = [str(ds.get("Modality", "")), str(ds.get("StudyDate", "")), str(ds.get("SeriesDescription", "")),
                 f"frame {frame}/{frame_count(ds)}"]
        if window is not None:
            lines.append(f"W {window.width:g} C {window.center:g}")
        draw.multiline_text((image.width - 4, 4), "\n".join(v for v in lines if v), font=font, fill=fill,
                            anchor="ra", align="right", stroke_width=1, stroke_fill=outline)


def encode(pictures: list[Image.Image], media_type: str, quality: int = DEFAULT_QUALITY,
           ds: Dataset | None = None) -> bytes:
    """Pictures as a JPEG or PNG (the first) or a GIF (animated when several)."""
    out = BytesIO()
    first = pictures[0]
    if media_type == "image/gif":
        duration = float(ds.get("FrameTime") or FRAME_TIME_MS) if ds is not None else FRAME_TIME_MS
        first.save(out, "GIF", save_all=len(pictures) > 1, append_images=pictures[1:],
                   duration=max(int(duration), 20), loop=0)
    elif media_type == "image/jpeg":
        first.save(out, "JPEG", quality=quality)
    else:
        first.save(out, ENCODINGS[media_type])
    return out.getvalue()
