"""One preprocessing for train, export, replay and run: a serializable `PreprocessSpec` and its OpenCV/numpy implementation.

decode (8/16-bit, gray or colour) -> colour mode -> frame-size check (frame_size) -> bit-depth check (pixel_max)
-> optional CLAHE (on 8 bits) -> ROI crops -> resize (optional letterbox) -> normalize -> float32 NCHW batch, one row per ROI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Literal, Protocol

import cv2
import numpy as np
from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from inspector.frame import FrameFault, Reason
from inspector.stderr_capture import Fd2Capture, forward
from inspector.strict_numbers import StrictNumbers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHOLE_FRAME = "frame"  # the ROI name used when a spec names no ROI
MAX_ROIS = 64
MAX_FRAME_SIDE = 1 << 20  # OpenCV's decoder refuses wider or taller images (CV_IO_MAX_IMAGE_WIDTH, _HEIGHT)
# Left out of the JSON when unset, so that specs from before they existed keep their bytes (and sha256).
_OMITTED_WHEN_UNSET = ("pixel_max", "frame_size")


class ColorMode(StrEnum):
    """Channels the model sees."""

    GRAY = "gray"
    RGB = "rgb"


class Interpolation(StrEnum):
    """Resize interpolation, as OpenCV names them."""

    NEAREST = "nearest"
    LINEAR = "linear"
    AREA = "area"
    CUBIC = "cubic"
    LANCZOS = "lanczos"


_CV_INTERPOLATION = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.LINEAR: cv2.INTER_LINEAR,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.CUBIC: cv2.INTER_CUBIC,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}


class _Strict(StrictNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Roi(_Strict):
    """A named rectangle of the frame, in pixels or as fractions of the frame's width and height."""

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="ROI name, used in verdicts, labels and per-ROI thresholds."
    )
    box: tuple[float, float, float, float] = Field(
        description="x_min, y_min, x_max, y_max (x_max and y_max exclusive); pixels, or fractions 0..1 with units=fraction."
    )
    units: Literal["px", "fraction"] = Field(default="px", description="Units of `box`: px (pixels) or fraction (of the frame size).")

    @model_validator(mode="after")
    def _check_box(self) -> Roi:
        x0, y0, x1, y1 = self.box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box must have x_max > x_min and y_max > y_min, got {list(self.box)}")
        if self.units == "fraction":
            if min(self.box) < 0 or max(self.box) > 1:
                raise ValueError(f"fraction box values must lie in 0..1, got {list(self.box)}")
        elif min(self.box) < 0 or any(v != int(v) for v in self.box):
            raise ValueError(f"pixel box values must be whole numbers >= 0, got {list(self.box)}")
        return self

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels for a frame of this size."""
        x0, y0, x1, y1 = self.box
        if self.units == "fraction":
            return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        return (int(x0), int(y0), int(x1), int(y1))


def repeated_names(rois: tuple[Roi, ...]) -> list[str]:
    """ROI names used more than once, sorted."""
    names = [r.name for r in rois]
    return sorted({n for n in names if names.count(n) > 1})


class Clahe(_Strict):
    """Contrast-limited adaptive histogram equalization (on the luma channel for colour)."""

    enabled: bool = Field(default=False, description="Apply CLAHE before cropping the ROIs.")
    clip_limit: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Contrast limit, in multiples of the mean histogram bin height of an 8-bit (256-bin) histogram. CLAHE works on 8 "
        "bits at every bit depth: a 16-bit frame is first scaled to 8 bits by its full scale (pixel_max, else 65535) and "
        "continues as an 8-bit image, so a limit means the same for 8- and 16-bit frames of one scene.",
    )
    tile_grid: tuple[Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)]] = Field(
        default=(8, 8), description="Tiles across and down (columns, rows), 1..64 each."
    )


class Resize(_Strict):
    """Resize of each ROI crop to the model's input size."""

    width: int = Field(default=224, ge=8, le=4096, description="Model input width, pixels.")
    height: int = Field(default=224, ge=8, le=4096, description="Model input height, pixels.")
    interpolation: Interpolation = Field(default=Interpolation.AREA, description="Interpolation: nearest, linear, area, cubic or lanczos.")
    letterbox: bool = Field(default=False, description="Keep the crop's aspect ratio and pad the rest instead of stretching.")
    pad_value: float = Field(default=0.0, ge=0, le=1, description="Letterbox padding, as a fraction of full scale (0 black, 1 white).")


class Normalize(_Strict):
    """Per-channel normalization after scaling pixels to 0..1: (x - mean) / std."""

    mean: tuple[float, ...] | None = Field(
        default=None, description="Per-channel mean in 0..1 (1 value for gray, 3 for rgb); unset: ImageNet's (their average for gray)."
    )
    std: tuple[float, ...] | None = Field(
        default=None, description="Per-channel standard deviation in 0..1, > 0; unset: ImageNet's (their average for gray)."
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"std values must be > 0, got {list(v)}")
        return v


class FrameSize(_Strict):
    """The range of frame sizes a model was trained on, in pixels; a frame outside it is rejected (`frame_size`)."""

    min_width: int = Field(ge=1, le=MAX_FRAME_SIDE, description="Narrowest frame trained on, pixels.")
    max_width: int = Field(ge=1, le=MAX_FRAME_SIDE, description="Widest frame trained on, pixels.")
    min_height: int = Field(ge=1, le=MAX_FRAME_SIDE, description="Lowest frame trained on, pixels.")
    max_height: int = Field(ge=1, le=MAX_FRAME_SIDE, description="Highest frame trained on, pixels.")
    applies_to: Literal["frame", "roi"] = Field(
        default="frame",
        description="What is checked against the range: frame (each frame as it arrives; what `inspector train` records) or roi "
        "(each ROI crop: what a station's `rois` make of a whole-frame model's range, since the images it was trained on are "
        "now the station's crops).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> FrameSize:
        for side in ("width", "height"):
            low, high = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if low > high:
                raise ValueError(f"min_{side} {low} is above max_{side} {high}; min_{side} must be <= max_{side}")
        return self

    @classmethod
    def spanning(cls, sizes: Iterable[tuple[int, int]]) -> FrameSize:
        """The smallest range holding every (width, height) in `sizes` (at least one)."""
        widths, heights = zip(*sizes, strict=True)
        return cls(min_width=min(widths), max_width=max(widths), min_height=min(heights), max_height=max(heights))

    def holding(self, sizes: Iterable[tuple[int, int]]) -> FrameSize:
        """The smallest range holding this one and every (width, height) in `sizes`: what --frame-size could say instead."""
        return FrameSize.spanning([(self.min_width, self.min_height), (self.max_width, self.max_height), *sizes])

    def fits(self, width: int, height: int) -> bool:
        """Whether a width x height image lies inside the range."""
        return self.min_width <= width <= self.max_width and self.min_height <= height <= self.max_height

    def describe(self, noun: str = "frames") -> str:
        """The range in words: '1280x1024 frames', or 'frames 122..608 wide and 227..399 high'."""
        if self.min_width == self.max_width and self.min_height == self.max_height:
            return f"{self.min_width}x{self.min_height} {noun}"
        return f"{noun} {_span(self.min_width, self.max_width)} wide and {_span(self.min_height, self.max_height)} high"

    def short(self) -> str:
        """The range as `--frame-size` takes it: WxH, or MINWxMINH..MAXWxMAXH."""
        low, high = f"{self.min_width}x{self.min_height}", f"{self.max_width}x{self.max_height}"
        return low if low == high else f"{low}..{high}"


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}..{high}"


class PreprocessSpec(_Strict):
    """Everything that turns a raw frame into the model's input; travels inside the ONNX model."""

    color: ColorMode = Field(default=ColorMode.RGB, description="Channels the model sees: gray (1) or rgb (3).")
    pixel_max: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Full-scale pixel value of the frames the model is trained on, in pixel levels: 255 for 8-bit files, 4095 for "
        "a 12-bit camera's 16-bit frames, 65535 for 16-bit; 256..65535 mean 16-bit frames. Frames of another bit depth are "
        "rejected (`unsupported_image`), and 16-bit pixels above it too. Normalization, letterbox padding and CLAHE scale by it. "
        "Unset: any depth, each scaled by its container (255 or 65535); `inspector train` sets it from the data.",
    )
    frame_size: FrameSize | Literal["any"] | None = Field(
        default=None,
        description="The range of frame sizes (width and height, pixels) the model was trained on; a frame outside it is "
        "rejected (`frame_size`) before it is judged: another camera resolution would put fractional ROIs, or a whole-frame "
        "model's view, somewhere it never learnt. `inspector train` records it from the training images unless given "
        "(`--frame-size`); `any`: none recorded on purpose, frames of every size are judged. Unset (models from before it "
        "existed): no check.",
    )
    clahe: Clahe = Field(default_factory=Clahe, description="Optional CLAHE on the whole frame.")
    rois: tuple[Roi, ...] = Field(default=(), max_length=MAX_ROIS, description="Named ROI crops; empty: the whole frame, named 'frame'.")
    resize: Resize = Field(default_factory=Resize, description="Resize of each crop to the model input.")
    normalize: Normalize = Field(default_factory=Normalize, description="Scaling to 0..1 then (x - mean) / std.")

    @field_validator("pixel_max")
    @classmethod
    def _depth(cls, v: int | None) -> int | None:
        if v is not None and v < 255:
            raise ValueError(f"pixel_max {v} names no bit depth: use 255 for 8-bit frames, or 256..65535 for 16-bit ones (4095 for 12-bit data)")
        return v

    @field_validator("frame_size", mode="wrap")
    @classmethod
    def _one_frame_size(cls, v: object, handler: ValidatorFunctionWrapHandler) -> FrameSize | str | None:
        # Through the union, a bad range would be reported twice (once per branch, under pydantic's internal names).
        try:
            return handler(v)
        except ValidationError:
            if isinstance(v, dict):
                return FrameSize.model_validate(v)  # its errors, under frame_size.<key>
            raise ValueError(
                f"expected any, or a range {{min_width, max_width, min_height, max_height}} in pixels; got {v!r}"
            ) from None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # Specs without pixel_max or frame_size keep their JSON byte for byte: its sha256 pins calibrations, and older
        # inspectors refuse unknown keys in a manifest.
        data = handler(self)
        for key in _OMITTED_WHEN_UNSET:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        dupes = repeated_names(self.rois)
        if dupes:
            raise ValueError(f"ROI names must be unique, repeated: {dupes}")
        n = self.channels
        for key in ("mean", "std"):
            v = getattr(self.normalize, key)
            if v is not None and len(v) != n:
                raise ValueError(f"normalize.{key} needs {n} value(s) for color={self.color.value}, got {len(v)}")
        return self

    @property
    def trained_size(self) -> FrameSize | None:
        """The range frames (or, applied to ROIs, crops) are checked against; None when the spec records none or `any`."""
        return self.frame_size if isinstance(self.frame_size, FrameSize) else None

    @property
    def channels(self) -> int:
        """Channels of the model input."""
        return 1 if self.color is ColorMode.GRAY else 3

    @property
    def roi_names(self) -> tuple[str, ...]:
        """ROI names in batch order."""
        return tuple(r.name for r in self.rois) or (WHOLE_FRAME,)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one batch row."""
        return (self.channels, self.resize.height, self.resize.width)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Effective per-channel mean and std."""
        if self.color is ColorMode.GRAY:
            mean = self.normalize.mean or (float(np.mean(IMAGENET_MEAN)),)
            std = self.normalize.std or (float(np.mean(IMAGENET_STD)),)
        else:
            mean = self.normalize.mean or IMAGENET_MEAN
            std = self.normalize.std or IMAGENET_STD
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def full_scale(self, dtype: np.dtype | type) -> float:
        """The pixel value that maps to 1.0 for frames of this dtype: 255 for 8-bit, pixel_max (else 65535) for 16-bit."""
        if np.dtype(dtype) == np.uint8:
            return 255.0
        return float(self.pixel_max) if self.pixel_max is not None and self.pixel_max > 255 else 65535.0

    def to_json(self) -> str:
        """Canonical JSON, as stored in the model manifest."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Parse the JSON stored in a model manifest."""
        return cls.model_validate_json(text)


def size_under_rois(trained: PreprocessSpec, rois: tuple[Roi, ...]) -> FrameSize | Literal["any"] | None:
    """The trained `frame_size` for the same model run with `rois`: a whole-frame model's range moves onto each ROI crop.

    A whole-frame model was trained on whole images; a station that crops ROIs out of its frames feeds it those crops,
    so the crops are what must look like the training images, and the station's frames may be any size that holds them.
    """
    size = trained.frame_size
    if isinstance(size, FrameSize) and rois and not trained.rois and size.applies_to == "frame":
        return size.model_copy(update={"applies_to": "roi"})
    return size


# --- decoding -------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC: what no chunk's data holds by chance
_JPEG_EOI = b"\xff\xd9"
TRAILER_MAX = 64  # bytes a camera or its driver may append after the end marker (a newline, a frame counter)


def _ends(data: bytes, marker: bytes, body_start: Callable[[bytes], int | None]) -> bool:
    """Whether `data` ends with `marker`, after it only zero padding (a partly written file) or a short trailer.

    The marker is only looked for in the last TRAILER_MAX bytes and at or after `body_start(data)`, where the image
    data begins: a JPEG cut short just after its EXIF thumbnail ends with that thumbnail's EOI.
    """
    body = data.rstrip(b"\x00")
    if body.endswith(marker):
        return True
    start = body_start(body)
    if start is None:
        return False
    return body.find(marker, max(start, len(body) - TRAILER_MAX - len(marker))) >= 0


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first scan's entropy-coded data, found by walking the marker segments; None when the file ends before."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # SOS: its header, then the scan
            return i + 2 + length
        i += 2 + length
    return None


def check_complete(data: bytes) -> str:
    """Name the image format of `data`, or raise FrameFault when it is empty, not an image, or cut short.

    Decoders cannot be trusted with partial writes: some libjpeg builds fill a truncated JPEG
    with grey and only warn, so the end marker is checked instead.
    """
    if not data:
        raise FrameFault(Reason.EMPTY_FILE, "the file has 0 bytes")
    if data[:3] == b"\xff\xd8\xff":
        if not _ends(data, _JPEG_EOI, _jpeg_scan_start):
            raise FrameFault(Reason.TRUNCATED, f"JPEG without its end marker (EOI) after {len(data)} bytes")
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        if not _ends(data, _PNG_IEND_CHUNK, lambda body: len(_PNG_SIGNATURE)):
            raise FrameFault(Reason.TRUNCATED, f"PNG without its IEND chunk after {len(data)} bytes")
        return "png"
    if data[:2] == b"BM" and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")
        if len(data) < declared:
            raise FrameFault(Reason.TRUNCATED, f"BMP has {len(data)} of its {declared} bytes")
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    raise FrameFault(Reason.NOT_AN_IMAGE, "not a JPEG, PNG, BMP or TIFF file (unknown signature)")


def decode(data: bytes, color: ColorMode) -> np.ndarray:
    """Decode encoded image bytes to uint8/uint16: gray (H, W), or for rgb RGB (H, W, 3) or a gray file's (H, W); FrameFault when impossible."""
    fmt = check_complete(data)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION
    # ANYCOLOR keeps a gray file gray: libjpeg's own 3-channel expansion plus BGR2RGB costs more than GRAY2RGB.
    flags |= cv2.IMREAD_GRAYSCALE if color is ColorMode.GRAY else cv2.IMREAD_ANYCOLOR
    buf = np.frombuffer(data, np.uint8)
    try:
        image, printed = _STDERR.call(lambda: cv2.imdecode(buf, flags))
    except cv2.error as exc:
        raise FrameFault(Reason.DECODE_FAILED, f"{fmt}: {exc.err or exc}") from exc
    lines = printed.splitlines()
    if image is None or image.size == 0:
        said = f": {'; '.join(line.strip() for line in lines)}" if lines else ""
        raise FrameFault(Reason.DECODE_FAILED, f"OpenCV could not decode this {fmt} file{said}")
    # libjpeg only warns about damaged entropy-coded data and fills in what it could not decode: a frame that ends
    # with its EOI can still be half a part, shifted.
    corrupt = [line for line in lines if fmt == "jpeg" and line.startswith(_LIBJPEG_CORRUPT)]
    forward("".join(line + "\n" for line in lines if line not in corrupt))
    if corrupt:
        raise FrameFault(Reason.DECODE_FAILED, f"damaged JPEG data (libjpeg: {corrupt[0].strip()})")
    return _to_color(image, color)


# libjpeg's warnings about the image data itself (jerror.h: JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC,
# JWRN_EXTRANEOUS_DATA, JWRN_JPEG_EOF, JWRN_NOT_SEQUENTIAL, JWRN_BOGUS_PROGRESSION); the others are about metadata.
_LIBJPEG_CORRUPT = (
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Invalid SOS parameters for sequential JPEG",
    "Inconsistent progression sequence",
)
# fd 2 is one per process, so is the capture that borrows it.
_STDERR = Fd2Capture()


def _to_color(image: np.ndarray, color: ColorMode) -> np.ndarray:
    """Gray stays one plane; BGR/BGRA (OpenCV's order, from files and cameras alike) becomes RGB or gray."""
    if image.dtype not in (np.uint8, np.uint16):
        raise FrameFault(Reason.UNSUPPORTED_IMAGE, f"pixel type {image.dtype}; expected 8- or 16-bit")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        raise FrameFault(Reason.UNSUPPORTED_IMAGE, f"{channels} channels; expected 1, 3 or 4")
    if channels == 1:
        # A gray frame stays one plane in rgb mode too: CLAHE, crop and resize then cost a third,
        # and normalize replicates it, exactly what GRAY2RGB up front would have produced.
        return image.reshape(image.shape[:2])
    code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY} if color is ColorMode.GRAY else {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    return cv2.cvtColor(image, code[channels])


def from_array(image: np.ndarray, color: ColorMode) -> np.ndarray:
    """Bring a camera's decoded frame (gray, or BGR/BGRA as OpenCV delivers it) to the spec's colour mode."""
    return _to_color(image, color)


# --- the pipeline stage ---------------------------------------------------------------------


class Preprocess(Protocol):
    """Turns a decoded frame into the model's input batch."""

    spec: PreprocessSpec

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return float32 (n_rois, C, H, W)."""
        ...


class Preprocessor:
    """The implementation of a `PreprocessSpec`; one instance per worker thread (CLAHE keeps buffers)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        self._clahe = (
            cv2.createCLAHE(clipLimit=spec.clahe.clip_limit, tileGridSize=tuple(spec.clahe.tile_grid)) if spec.clahe.enabled else None
        )
        mean, std = spec.mean_std()
        # (x / full_scale - mean) / std folded into one multiply-add per pixel, per bit depth.
        self._full = {depth: spec.full_scale(depth) for depth in (np.uint8, np.uint16)}
        self._affine = {
            depth: ((1.0 / (full * std)).astype(np.float32), (-mean / std).astype(np.float32)) for depth, full in self._full.items()
        }
        self._interp = _CV_INTERPOLATION[spec.resize.interpolation]

    def decode(self, data: bytes) -> np.ndarray:
        """Decode encoded bytes in this spec's colour mode."""
        return decode(data, self.spec.color)

    def check_size(self, image: np.ndarray) -> None:
        """FrameFault (frame_size) when the frame, or with `applies_to: roi` a ROI crop of it, lies outside the trained sizes."""
        size = self.spec.trained_size
        if size is None:
            return
        h, w = image.shape[:2]
        if size.applies_to == "frame" or not self.spec.rois:
            if not size.fits(w, h):
                raise FrameFault(Reason.FRAME_SIZE, f"{w}x{h} frame; this model was trained on {size.describe()}")
            return
        for roi in self.spec.rois:
            x0, y0, x1, y1 = roi.pixels(w, h)
            cw, ch = x1 - x0, y1 - y0
            if x1 > w or y1 > h or cw <= 0 or ch <= 0:
                continue  # crops() rejects it as roi_out_of_bounds, the more precise reason
            if not size.fits(cw, ch):
                raise FrameFault(
                    Reason.FRAME_SIZE,
                    f"ROI {roi.name} is {cw}x{ch} on this {w}x{h} frame; this model was trained on {size.describe('images')} "
                    "and judges each ROI crop as one of them",
                )

    def check_depth(self, image: np.ndarray) -> None:
        """FrameFault (unsupported_image) when the frame's bit depth or pixel values are not those the model was trained on."""
        limit = self.spec.pixel_max
        if limit is None:
            return
        bits, trained = (8 if image.dtype == np.uint8 else 16), (8 if limit <= 255 else 16)
        if bits != trained:
            raise FrameFault(Reason.UNSUPPORTED_IMAGE, f"{bits}-bit frame; this model was trained on {trained}-bit frames (pixel_max {limit})")
        if bits == 16 and limit < 65535:
            top = int(image.max())
            if top > limit:
                # Scaled by pixel_max, such a frame would be brighter than anything trained on: a camera sending its 12 bits
                # left-aligned (MSB), or set to another bit depth.
                raise FrameFault(
                    Reason.UNSUPPORTED_IMAGE,
                    f"pixel value {top} above pixel_max {limit}, the full scale this model was trained on; "
                    "check the camera's bit depth and that its pixels are right-aligned (LSB)",
                )

    def equalize(self, image: np.ndarray) -> np.ndarray:
        """Apply CLAHE when enabled, on 8 bits (a 16-bit frame comes back 8-bit), on Y of YCrCb for colour."""
        if self._clahe is None:
            return image
        if image.dtype == np.uint16:
            # OpenCV's 16-bit CLAHE clips a 65536-bin histogram at max(clip_limit * tile pixels / 65536, 1): the limit would
            # mean something else and barely change a frame. On 8 bits it means the same at every depth.
            image = cv2.convertScaleAbs(image, alpha=255.0 / self._full[np.uint16])
        if image.ndim == 2:
            return self._clahe.apply(image)
        ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
        ycrcb[:, :, 0] = self._clahe.apply(np.ascontiguousarray(ycrcb[:, :, 0]))
        return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)

    def crops(self, image: np.ndarray) -> list[np.ndarray]:
        """Cut the ROIs; FrameFault when a pixel ROI does not fit this frame."""
        if not self.spec.rois:
            return [image]
        h, w = image.shape[:2]
        out = []
        for roi in self.spec.rois:
            x0, y0, x1, y1 = roi.pixels(w, h)
            if x1 > w or y1 > h:
                raise FrameFault(Reason.ROI_OUT_OF_BOUNDS, f"ROI {roi.name} {[x0, y0, x1, y1]} does not fit a {w}x{h} frame")
            if x1 <= x0 or y1 <= y0:
                raise FrameFault(Reason.ROI_OUT_OF_BOUNDS, f"ROI {roi.name} is empty on a {w}x{h} frame")
            out.append(image[y0:y1, x0:x1])
        return out

    def resize(self, crop: np.ndarray, *, pad: int | None = None, interpolation: int | None = None) -> np.ndarray:
        """Resize one crop to the model's input size, letterboxed when the spec says so.

        `pad` and `interpolation` override the spec's for images that share the geometry, not the pixels (defect masks).
        """
        rs = self.spec.resize
        interp = self._interp if interpolation is None else interpolation
        if not rs.letterbox:
            if crop.shape[1] == rs.width and crop.shape[0] == rs.height:
                return crop
            return cv2.resize(crop, (rs.width, rs.height), interpolation=interp)
        h, w = crop.shape[:2]
        scale = min(rs.width / w, rs.height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(crop, (nw, nh), interpolation=interp)
        fill = round(rs.pad_value * self._full[crop.dtype.type]) if pad is None else pad
        canvas = np.full((rs.height, rs.width) + crop.shape[2:], fill, dtype=crop.dtype)
        top, left = (rs.height - nh) // 2, (rs.width - nw) // 2
        canvas[top : top + nh, left : left + nw] = resized
        return canvas

    def normalize(self, image: np.ndarray, out: np.ndarray) -> None:
        """Scale and normalize one HxW(xC) image into the CHW row `out`."""
        scale, offset = self._affine[image.dtype.type]
        for c in range(out.shape[0]):
            plane = image if image.ndim == 2 else image[:, :, c]
            np.multiply(plane, scale[c], out=out[c], casting="unsafe")
            out[c] += offset[c]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Decoded image (gray, or RGB for an rgb spec) -> float32 (n_rois, C, H, W)."""
        self.check_size(image)  # the shape alone: a frame from another camera mode costs no CLAHE
        self.check_depth(image)
        image = self.equalize(image)
        crops = self.crops(image)
        batch = np.empty((len(crops), *self.spec.input_shape), np.float32)
        for i, crop in enumerate(crops):
            self.normalize(self.resize(crop), batch[i])
        return batch
