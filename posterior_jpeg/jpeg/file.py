"""Reading real JPEG files: stored quantized coefficients, tables, sampling, size, orientation.

A marker walk of our own validates the structure first (so that bad, unsupported, oversized or
bomb-like files are refused with a precise reason before libjpeg allocates anything) and reads the
metadata (EXIF, ICC, Adobe). libjpeg (jpeglib's build) then entropy-decodes a sanitized copy of the
stream that holds only what it needs, as the walk found it: no APPn/COM segments and no stray bytes
between segments. No Huffman decoding of our own.
"""

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field

import jpeglib
import numpy as np
import torch
from jpeglib._bind import CJpegLib
from PIL import Image

from ..errors import ImageTooLargeError, InvalidJpegError, UnsupportedJpegError
from . import codec, subsampling

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
_SOI, _EOI, _SOS, _DAC, _COM = 0xD8, 0xD9, 0xDA, 0xCC, 0xFE
_APPN = range(0xE0, 0xF0)
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length

# Real progressive files have about 10 scans; each scan is a pass over all its blocks, so a small
# file with thousands of scans costs minutes. 500 is libjpeg-turbo's -maxscans preset.
DEFAULT_MAX_SCANS = 500
# A scan that codes every block spends at least one bit on each: at most 512 pixels per byte of scan
# data. Flat images written by Pillow reach 256, the files in ../shared/realfiles at most 108.
DEFAULT_MAX_PIXELS_PER_BYTE = 1024


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
    scans: int = 0
    coded_bytes: int = 0  # entropy-coded data of all scans
    stream: list = field(default_factory=list)  # the sanitized copy for libjpeg, in pieces
    warnings: list = field(default_factory=list)


def _read_exif_orientation(header: _Header, payload: bytes) -> None:
    """The orientation tag; Pillow's complaints about a broken block become warnings of the file
    (instead of lines on stderr), and a broken block must not make the image unreadable."""
    exif = Image.Exif()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif.load(payload)
            orientation = int(exif.get(0x0112, 1))
        except Exception as error:
            header.warnings.append(f"EXIF block unreadable ({error}); orientation taken as upright")
            orientation = 1
    header.warnings += [f"EXIF: {str(warning.message).strip()}" for warning in caught]
    header.orientation = orientation if 1 <= orientation <= 8 else 1


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


def _next_marker(data: bytes, pos: int) -> tuple[int, int]:
    """(position of the next marker code, extraneous bytes skipped before it), found as libjpeg
    finds it: bytes other than 0xFF are skipped, fill 0xFF are free, a stuffed FF00 counts as two
    bytes. The position is -1 when the data ends first."""
    skipped = 0
    while True:
        start = data.find(b"\xff", pos)
        if start < 0:
            return -1, skipped
        skipped += start - pos
        pos = start
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            return -1, skipped
        if data[pos] != 0x00:
            return pos, skipped
        skipped += 2
        pos += 1


def _skip_entropy_coded_data(data: bytes, pos: int) -> int:
    """Position of the 0xFF that starts the next real marker after scan data (stuffed FF00 and RSTn
    belong to the scan), -1 if there is none."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def _read_metadata(header: _Header, marker: int, segment: bytes) -> None:
    """The APPn segments we use (first EXIF block as in Pillow, ICC chunks, Adobe); others are skipped."""
    if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and not header.seen_exif:
        header.seen_exif = True
        _read_exif_orientation(header, segment)
    elif marker == 0xE2 and segment.startswith(b"ICC_PROFILE\x00") and len(segment) > 14:
        header.icc_chunks[segment[12]] = segment[14:]
    elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
        header.adobe_transform = segment[11]


def _parse_header(
    data: bytes, source: str, max_pixels: int | None, max_scans: int | None, max_pixels_per_byte: int | None
) -> _Header:
    """Walk the markers as libjpeg does, check structure and limits, read metadata and build the
    sanitized stream (SOI, every segment but APPn/COM, scan data, EOI)."""
    if len(data) == 0:
        raise InvalidJpegError(f"{source}: empty data")
    if data[:2] != b"\xff\xd8":
        raise InvalidJpegError(f"{source}: not a JPEG file (no start-of-image marker)")
    header = _Header(stream=[b"\xff\xd8"])
    pos = 2
    while True:
        at, skipped = _next_marker(data, pos)
        if at < 0:
            raise InvalidJpegError(f"{source}: truncated (no end-of-image marker)")
        marker = data[at]
        pos = at + 1
        if skipped:  # libjpeg's wording: it decodes such files with this warning
            header.warnings.append(f"Corrupt JPEG data: {skipped} extraneous bytes before marker 0x{marker:02x}")
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if marker == _SOI:
            raise InvalidJpegError(f"{source}: unexpected marker 0xFF{marker:02X} at byte {at - 1}")
        if pos + 2 > len(data):
            raise InvalidJpegError(f"{source}: truncated inside a marker segment")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise InvalidJpegError(f"{source}: truncated or corrupt marker segment 0xFF{marker:02X}")
        segment = data[pos + 2 : pos + length]
        pos += length
        if marker in _APPN or marker == _COM:
            _read_metadata(header, marker, segment)
            continue
        header.stream.append(b"\xff" + data[at:pos])
        if marker in _SUPPORTED_SOF or marker in _UNSUPPORTED_SOF:
            _read_sof(header, marker, segment, source, max_pixels)
        elif marker == _DAC:
            raise UnsupportedJpegError(f"{source}: arithmetic-coded JPEG is not supported")
        elif marker == _SOS:
            if not header.seen_sof:
                raise InvalidJpegError(f"{source}: scan before the frame header")
            _read_sos(header, segment, source)
            header.scans += 1
            if max_scans is not None and header.scans > max_scans:
                raise ImageTooLargeError(
                    f"{source}: more than {max_scans} scans (pass max_scans=None to lift the limit for trusted files)"
                )
            end = _skip_entropy_coded_data(data, pos)
            if end < 0:
                raise InvalidJpegError(f"{source}: truncated (scan data ends without end-of-image marker)")
            header.stream.append(data[pos:end])
            header.coded_bytes += end - pos
            pos = end
    if not header.scans:
        raise InvalidJpegError(f"{source}: no image data (no scan)")
    missing = [c for c in header.component_ids if c not in header.scanned_ids]
    if missing:
        raise InvalidJpegError(f"{source}: component(s) {missing} appear in no scan")
    pixels = header.height * header.width
    if max_pixels_per_byte is not None and pixels > max_pixels_per_byte * header.coded_bytes:
        raise ImageTooLargeError(
            f"{source}: {header.width}x{header.height} pixels from {header.coded_bytes} bytes of scan data, "
            f"more than {max_pixels_per_byte} pixels per byte (a decompression bomb or missing data; pass "
            "max_pixels_per_byte=None to lift the limit for trusted files)"
        )
    header.stream.append(b"\xff\xd9")
    return header


def _sampling_mode(factors: list, source: str) -> str:
    if len(factors) == 1:
        return subsampling.GRAY
    (h0, v0), (h1, v1), (h2, v2) = factors
    if (h1, v1) != (h2, v2) or min(h0, v0, h1, v1) == 0 or h0 % h1 or v0 % v1:
        raise UnsupportedJpegError(f"{source}: sampling factors {factors} are not supported")
    ratio = (v0 // v1, h0 // h1)
    for mode, mode_factors in subsampling.SUBSAMPLING.items():
        if mode_factors == ratio:
            return mode
    raise UnsupportedJpegError(f"{source}: chroma subsampling {h0}x{v0}:{h1}x{v1} is not supported")


# libjpeg prints its messages to the process's file descriptor 2, captured one call at a time.
_LIBJPEG_LOCK = threading.Lock()
_COLOR_SPACES = {space.value: space.name for space in jpeglib.Colorspace}


@contextlib.contextmanager
def _captured_fd2():
    """Collect the lines written to file descriptor 2 meanwhile: libjpeg prints its warnings and
    errors there with fprintf, out of reach of sys.stderr."""
    lines = []
    if sys.stderr is not None:
        sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line.strip() for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip()]


def _libjpeg_decode(stream: bytes, source: str):
    """Entropy-decode `stream` with jpeglib's libjpeg: (int16 coefficient planes, tables per
    component, libjpeg's colour space code, libjpeg's messages).

    Calls jpeglib's C entry points rather than jpeglib.read_dct, which hooks every APPn/COM marker
    into a buffer that overflows on a zero-length one, writes a temporary copy of the file that it
    keeps when libjpeg fails, and prints to stdout. Here libjpeg opens an unnamed temporary file
    through /dev/fd (nothing stays on disk, even if the process dies)."""
    with tempfile.TemporaryFile() as held:
        held.write(stream)
        held.flush()
        return libjpeg_read_fd(held.fileno(), source)


def libjpeg_read_fd(descriptor: int, source: str):
    """What `_libjpeg_decode` returns, for a JPEG stream already in the open file `descriptor`
    (read through /dev/fd): libjpeg sizes the arrays itself in a first pass and fills them in a
    second."""
    lib = CJpegLib.get()
    block_dims, samp_factor = (ctypes.c_int * 8)(), (ctypes.c_int * 8)()
    image_dims, color_space = (ctypes.c_int * 2)(), (ctypes.c_int * 2)()
    components, scans, flags = (ctypes.c_int * 3)(), (ctypes.c_int * 1)(), (ctypes.c_uint64 * 1)()
    qt, table_ids = (ctypes.c_ushort * 256)(), (ctypes.c_short * 4)()
    planes = []
    with _LIBJPEG_LOCK, _captured_fd2() as messages:
        path = f"/dev/fd/{descriptor}".encode()
        ok = lib.read_jpeg_info(
            path, block_dims, image_dims, components, samp_factor, color_space, None, None, None, None, scans, flags
        )
        if ok:
            shapes = [(block_dims[2 * c], block_dims[2 * c + 1], 8, 8) for c in range(components[0])]
            planes = [np.zeros(shape, np.int16) for shape in shapes]
            pointers = [plane.ctypes.data_as(ctypes.c_void_p) for plane in planes] + [None] * (4 - len(planes))
            ok = lib.read_jpeg_dct(path, *pointers, qt, table_ids)
    if not ok:
        reason = messages[-1] if messages else "no reason given"
        raise InvalidJpegError(f"{source}: libjpeg could not decode it ({reason})")
    tables = np.ctypeslib.as_array(qt).reshape(4, 8, 8)[[table_ids[c] for c in range(len(planes))]]
    return planes, tables.astype(np.int32), color_space[1], messages


@dataclass(frozen=True, eq=False)
class JpegFile:
    """What a JPEG file stores: quantized DCT coefficients, tables and geometry.

    coefficients: one int16 array [blocks_down, blocks_across, 8, 8] per component (Y, Cb, Cr or Y
      alone), in stored orientation, coefficient [u, v] = vertical frequency u, horizontal v.
    qtables: int32 [components, 8, 8], the table each component was quantized with.
    sampling: "4:4:4", "4:2:2", "4:2:0", "4:4:0" or "gray".
    size: (height, width) in pixels, as in tensor shapes.
    orientation: the EXIF orientation tag (1 = upright); coefficients are not rotated.
    warnings: what libjpeg (or our walk, in libjpeg's words) reported while reading a file it still
      decodes, e.g. "Corrupt JPEG data: 2 extraneous bytes before marker 0xd9"; without the file
      name, which callers add.
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

    @property
    def flat_chroma(self) -> bool:
        """A colour file whose chroma planes hold one flat tint (every AC coefficient zero, one DC value
        in every block): a gray or uniformly toned photo stored as YCbCr. The file then gives no
        evidence of any colour detail, and the sampler keeps the decode's chroma."""
        if len(self.coefficients) < 3:
            return False
        for plane in self.coefficients[1:]:
            blocks = plane.reshape(-1, 64)
            if blocks[:, 1:].any() or (blocks[:, 0] != blocks[0, 0]).any():
                return False
        return True

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


def read_jpeg(
    source,
    max_pixels: int | None | str = "default",
    max_scans: int | None = DEFAULT_MAX_SCANS,
    max_pixels_per_byte: int | None = DEFAULT_MAX_PIXELS_PER_BYTE,
) -> JpegFile:
    """Read a JPEG from a path or bytes; prints nothing, libjpeg's warnings land in `.warnings`.

    Raises InvalidJpegError (not a JPEG, empty, truncated, corrupt), UnsupportedJpegError (CMYK,
    12-bit, arithmetic, lossless, exotic sampling) or ImageTooLargeError, from the headers before
    any decoding: more than max_pixels (default: Pillow's decompression-bomb limit), more than
    max_scans scans, or more than max_pixels_per_byte pixels per byte of scan data (a tiny file
    that declares a huge image). None lifts a limit."""
    if max_pixels == "default":
        max_pixels = default_max_pixels()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "<bytes>"
    else:
        name = os.fspath(source)
        try:
            with open(name, "rb") as handle:
                data = handle.read(2)
                if data == b"\xff\xd8":  # the signature first: a file that is not a JPEG is never read whole
                    data += handle.read()
        except OSError as error:
            raise InvalidJpegError(f"{name}: cannot read ({error.strerror or error})") from None
    header = _parse_header(data, name, max_pixels, max_scans, max_pixels_per_byte)
    mode = _sampling_mode(header.factors, name)
    if mode != subsampling.GRAY and header.adobe_transform == 0:
        raise UnsupportedJpegError(f"{name}: RGB-coded JPEG (Adobe transform 0) is not supported")
    coefficients, tables, color_space, messages = _libjpeg_decode(b"".join(header.stream), name)
    if mode != subsampling.GRAY and color_space != jpeglib.JCS_YCbCr.value:
        space = _COLOR_SPACES.get(color_space, color_space)
        raise UnsupportedJpegError(f"{name}: colour space {space} is not supported")
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
        warnings=tuple(dict.fromkeys(header.warnings + messages)),  # libjpeg's two passes repeat theirs
    )
