"""Reading real JPEG files: stored quantized coefficients, tables, sampling, size, orientation.

A small marker walk validates the structure first (so that bad, unsupported or oversized files are
refused with a precise reason before libjpeg allocates anything); libjpeg (through jpeglib) then
does the entropy decoding. No Huffman decoding of our own.
"""

import os
import tempfile
from dataclasses import dataclass, field

import jpeglib
import numpy as np
import torch
from PIL import Image

from ..errors import ImageTooLargeError, InvalidJpegError, UnsupportedJpegError
from . import codec, sampling

# SOF markers we decode: baseline, extended sequential and progressive, Huffman-coded.
_SUPPORTED_SOF = {0xC0: False, 0xC1: False, 0xC2: True}  # marker -> progressive
_UNSUPPORTED_SOF = {
    0xC3: "lossless JPEG",
    0xC5: "hierarchical JPEG",
    0xC6: "hierarchical JPEG",
    0xC7: "hierarchical lossless JPEG",
    0xC9: "arithmetic-coded JPEG",
    0xCA: "arithmetic-coded progressive JPEG",
    0xCB: "arithmetic-coded lossless JPEG",
    0xCD: "hierarchical arithmetic-coded JPEG",
    0xCE: "hierarchical arithmetic-coded JPEG",
    0xCF: "hierarchical arithmetic-coded JPEG",
}
_SOI, _EOI, _SOS, _DAC = 0xD8, 0xD9, 0xDA, 0xCC
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


def default_max_pixels() -> int | None:
    """Pillow's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS, None when disabled there)."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


@dataclass
class _Header:
    progressive: bool = False
    precision: int = 0
    height: int = 0
    width: int = 0
    factors: list = field(default_factory=list)  # (h, v) per component, as stored
    component_ids: list = field(default_factory=list)  # frame component identifiers, in order
    scanned_ids: set = field(default_factory=set)  # components that appear in at least one scan
    adobe_transform: int | None = None
    orientation: int = 1
    seen_exif: bool = False
    icc_chunks: dict = field(default_factory=dict)
    seen_sof: bool = False
    seen_sos: bool = False


def _parse_exif_orientation(payload: bytes) -> int:
    exif = Image.Exif()
    try:
        exif.load(payload)
        orientation = int(exif.get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _read_sof(header: _Header, marker: int, segment: bytes, source: str, max_pixels: int | None) -> None:
    if marker in _UNSUPPORTED_SOF:
        raise UnsupportedJpegError(f"{source}: {_UNSUPPORTED_SOF[marker]} is not supported")
    if header.seen_sof:
        raise InvalidJpegError(f"{source}: more than one frame header (SOF)")
    if len(segment) < 6:
        raise InvalidJpegError(f"{source}: frame header (SOF) too short")
    header.seen_sof = True
    header.progressive = _SUPPORTED_SOF[marker]
    header.precision = segment[0]
    header.height = int.from_bytes(segment[1:3], "big")
    header.width = int.from_bytes(segment[3:5], "big")
    count = segment[5]
    if header.precision != 8:
        raise UnsupportedJpegError(f"{source}: {header.precision}-bit samples are not supported (8-bit only)")
    if count == 4:
        raise UnsupportedJpegError(f"{source}: CMYK/YCCK JPEG (4 components) is not supported")
    if count not in (1, 3):
        raise UnsupportedJpegError(f"{source}: {count}-component JPEG is not supported")
    if len(segment) < 6 + 3 * count:
        raise InvalidJpegError(f"{source}: frame header (SOF) too short for {count} components")
    if header.height == 0:
        raise UnsupportedJpegError(f"{source}: height defined by a DNL marker is not supported")
    if header.width == 0:
        raise InvalidJpegError(f"{source}: image width is 0")
    if max_pixels is not None and header.height * header.width > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {header.width}x{header.height} = {header.height * header.width} pixels exceeds "
            f"the limit of {max_pixels} (pass max_pixels=None to lift it for trusted files)"
        )
    for i in range(count):
        component_id, hv, table = segment[6 + 3 * i : 9 + 3 * i]
        if component_id in header.component_ids:
            raise InvalidJpegError(f"{source}: frame header repeats component {component_id}")
        if table > 3:
            raise InvalidJpegError(f"{source}: quantization table id {table} out of range (0-3)")
        header.component_ids.append(component_id)
        header.factors.append((hv >> 4, hv & 15))


def _read_sos(header: _Header, segment: bytes, source: str) -> None:
    """Check the scan's component selectors: libjpeg 6b lets a repeated selector leave a component
    without any scan (zero coefficients, table never checked), which must not pass as a valid file."""
    count = segment[0] if segment else 0
    if not 1 <= count <= 4 or len(segment) < 1 + 2 * count + 3:
        raise InvalidJpegError(f"{source}: corrupt scan header (SOS)")
    selectors = [segment[1 + 2 * i] for i in range(count)]
    if len(set(selectors)) != count or not set(selectors) <= set(header.component_ids):
        raise InvalidJpegError(
            f"{source}: scan header (SOS) names components {selectors}, frame has {header.component_ids}"
        )
    header.scanned_ids.update(selectors)


def _skip_entropy_coded_data(data: bytes, pos: int) -> int:
    """Position of the next real marker after scan data (stuffed FF00 and RSTn belong to the scan)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def _parse_header(data: bytes, source: str, max_pixels: int | None) -> _Header:
    if len(data) == 0:
        raise InvalidJpegError(f"{source}: empty data")
    if data[:2] != b"\xff\xd8":
        raise InvalidJpegError(f"{source}: not a JPEG file (no start-of-image marker)")
    header = _Header()
    pos = 2
    while True:
        if pos >= len(data):
            raise InvalidJpegError(f"{source}: truncated (no end-of-image marker)")
        if data[pos] != 0xFF:
            raise InvalidJpegError(f"{source}: corrupt marker structure at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            raise InvalidJpegError(f"{source}: truncated (no end-of-image marker)")
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if marker == _SOI or marker == 0x00:
            raise InvalidJpegError(f"{source}: unexpected marker 0xFF{marker:02X} at byte {pos - 2}")
        if pos + 2 > len(data):
            raise InvalidJpegError(f"{source}: truncated inside a marker segment")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise InvalidJpegError(f"{source}: truncated or corrupt marker segment 0xFF{marker:02X}")
        segment = data[pos + 2 : pos + length]
        pos += length
        if marker in _SUPPORTED_SOF or marker in _UNSUPPORTED_SOF:
            _read_sof(header, marker, segment, source, max_pixels)
        elif marker == _DAC:
            raise UnsupportedJpegError(f"{source}: arithmetic-coded JPEG is not supported")
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and not header.seen_exif:
            header.seen_exif = True  # the first EXIF block counts, as in Pillow
            header.orientation = _parse_exif_orientation(segment)
        elif marker == 0xE2 and segment.startswith(b"ICC_PROFILE\x00") and len(segment) > 14:
            header.icc_chunks[segment[12]] = segment[14:]
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            header.adobe_transform = segment[11]
        elif marker == _SOS:
            if not header.seen_sof:
                raise InvalidJpegError(f"{source}: scan before the frame header")
            _read_sos(header, segment, source)
            header.seen_sos = True
            pos = _skip_entropy_coded_data(data, pos)
            if pos < 0:
                raise InvalidJpegError(f"{source}: truncated (scan data ends without end-of-image marker)")
    if not header.seen_sos:
        raise InvalidJpegError(f"{source}: no image data (no scan)")
    missing = [c for c in header.component_ids if c not in header.scanned_ids]
    if missing:
        raise InvalidJpegError(f"{source}: component(s) {missing} appear in no scan")
    return header


def _sampling_mode(factors: list, source: str) -> str:
    if len(factors) == 1:
        return sampling.GRAY
    (h0, v0), (h1, v1), (h2, v2) = factors
    if (h1, v1) != (h2, v2) or min(h0, v0, h1, v1) == 0 or h0 % h1 or v0 % v1:
        raise UnsupportedJpegError(f"{source}: sampling factors {factors} are not supported")
    ratio = (v0 // v1, h0 // h1)
    for mode, mode_factors in sampling.SUBSAMPLING.items():
        if mode_factors == ratio:
            return mode
    raise UnsupportedJpegError(f"{source}: chroma subsampling {h0}x{v0}:{h1}x{v1} is not supported")


def _decode_coefficients(data: bytes, path: str | None, source: str):
    """Entropy-decode with libjpeg; returns (coefficients per component, tables per component, colour space)."""
    temporary = None
    if path is None:
        handle = tempfile.NamedTemporaryFile(suffix=".jpg", delete=False)
        with handle:
            handle.write(data)
        path = temporary = handle.name
    try:
        jpeg = jpeglib.read_dct(path)
        planes = [jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.has_chrominance else [])
        tables = np.stack([jpeg.qt[index] for index in jpeg.quant_tbl_no[: len(planes)]])
        color_space = str(jpeg.jpeg_color_space)
    except OSError as error:
        raise InvalidJpegError(f"{source}: libjpeg could not decode it ({error})") from None
    finally:
        if temporary is not None:
            os.unlink(temporary)
    return [np.ascontiguousarray(p, dtype=np.int16) for p in planes], tables.astype(np.int32), color_space


@dataclass(frozen=True, eq=False)
class JpegFile:
    """What a JPEG file stores: quantized DCT coefficients, tables and geometry.

    coefficients: one int16 array [blocks_down, blocks_across, 8, 8] per component (Y, Cb, Cr or Y
      alone), in stored orientation, coefficient [u, v] = vertical frequency u, horizontal v.
    qtables: int32 [components, 8, 8], the table each component was quantized with.
    sampling: "4:4:4", "4:2:2", "4:2:0", "4:4:0" or "gray".
    size: (height, width) in pixels, as in tensor shapes.
    orientation: the EXIF orientation tag (1 = upright); coefficients are not rotated.
    """

    coefficients: list
    qtables: np.ndarray
    sampling: str
    size: tuple
    progressive: bool
    orientation: int = 1
    icc_profile: bytes | None = None
    source: str = "<bytes>"
    warnings: tuple = ()

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def coefficient_tensors(self, device=None) -> list[torch.Tensor]:
        """The stored coefficients as [1, hb, wb, 8, 8] int64 tensors."""
        return [torch.from_numpy(c.astype(np.int64)).unsqueeze(0).to(device) for c in self.coefficients]

    def qtable_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Quantization tables as a [components, 8, 8] tensor."""
        return torch.from_numpy(self.qtables).to(device=device, dtype=dtype)

    def decode(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """Float RGB [3, H, W] in [0, 1] from the coefficients (our IDCT and triangle upsampling)."""
        coefficients = [c.to(dtype) for c in self.coefficient_tensors(device)]
        return codec.decode(coefficients, self.qtable_tensor(device, dtype), self.sampling, self.size)[0]

    def __repr__(self) -> str:
        kind = "progressive" if self.progressive else "baseline"
        return (
            f"JpegFile({self.source!r}, {self.width}x{self.height}, {self.sampling}, {kind}, "
            f"orientation={self.orientation})"
        )


def read_jpeg(source, max_pixels: int | None | str = "default") -> JpegFile:
    """Read a JPEG from a path or bytes.

    Raises InvalidJpegError (not a JPEG, empty, truncated, corrupt), UnsupportedJpegError (CMYK,
    12-bit, arithmetic, lossless, exotic sampling) or ImageTooLargeError (more than max_pixels,
    checked from the header before decoding; default: Pillow's decompression-bomb limit)."""
    if max_pixels == "default":
        max_pixels = default_max_pixels()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path, name = bytes(source), None, "<bytes>"
    else:
        path = name = os.fspath(source)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise InvalidJpegError(f"{name}: cannot read ({error.strerror or error})") from None
    header = _parse_header(data, name, max_pixels)
    mode = _sampling_mode(header.factors, name)
    if mode != sampling.GRAY and header.adobe_transform == 0:
        raise UnsupportedJpegError(f"{name}: RGB-coded JPEG (Adobe transform 0) is not supported")
    coefficients, tables, color_space = _decode_coefficients(data, path, name)
    if mode != sampling.GRAY and "YCbCr" not in color_space:
        raise UnsupportedJpegError(f"{name}: colour space {color_space} is not supported")
    if (tables < 1).any():  # libjpeg accepts 0 (spec: 1..255 or 1..65535); we divide by tables
        raise InvalidJpegError(f"{name}: quantization table with a zero entry")
    icc = b"".join(header.icc_chunks[k] for k in sorted(header.icc_chunks)) or None
    return JpegFile(
        coefficients=coefficients,
        qtables=tables,
        sampling=mode,
        size=(header.height, header.width),
        progressive=header.progressive,
        orientation=header.orientation,
        icc_profile=icc,
        source=name,
    )
