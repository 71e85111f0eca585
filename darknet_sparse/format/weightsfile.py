"""The Darknet ``.weights`` file: header, layer-by-layer reader, atomic writer.

Format (both forks; ``docs/format.md`` gives the details and sources)::

    offset  size  field
    0       4     major     int32, native (little) endian
    4       4     minor     int32
    8       4     revision  int32
    12      8|4   seen      images trained on: uint64 or uint32 (rule below)
    20|16   ...   payload   raw float32 arrays, no tags, sizes or padding

``seen`` is 8 bytes when ``major*10 + minor >= 2``; pjreddie additionally
requires ``major < 1000 and minor < 1000`` (AlexeyAB does not), so the two
forks read a different header length only for "transposed" files, those
with ``major > 1000 or minor > 1000``, in which every connected weight
matrix (also inside rnn/gru/lstm) is stored as ``[inputs][outputs]`` instead
of ``[outputs][inputs]``.  pjreddie saves (0, 2, 0), AlexeyAB (0, 2, 5).

The payload is the parameter arrays of every layer in cfg order, each layer
in the order :mod:`darknet_sparse.format.layout` lists, so the expected size is
``header + 4 * sum(counts)`` (:func:`expected_size`).  A file that ends exactly on a layer boundary
is a *partial* file such as ``darknet53.conv.74`` (Darknet loads those);
one that ends inside a layer is an error; bytes after the last layer are
*trailing* and kept as they are.

Arrays are read through a read-only memmap or in fixed-size chunks, so a
500 MB file never needs two copies in memory.  Writing streams the file
into a temporary file in the target folder, passing the chosen arrays
through an edit one chunk at a time and copying every other byte in the
kernel (``copy_file_range``, as ``cp`` does), then renames the result over
the target: every byte not edited is the input's, header and ``seen``
included, and a failure leaves the target as it was.  Like ``cp``, it does
not fsync.
"""
from __future__ import annotations

import os
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import ArrayError, NoSuchArrayError, OutputError, WeightsFormatError
from .layout import Layer, Model, Param

FLOAT = np.dtype("<f4")
#: Floats per chunk for streamed reading and writing (1 MiB: of 256 KiB, 1 MiB
#: and 4 MiB the fastest, with the edit's temporaries in cache).
CHUNK = 1 << 18
#: Headers written for new files by each fork's ``save_weights``.
SAVED_VERSION = {"pjreddie": (0, 2, 0), "alexeyab": (0, 2, 5)}


@dataclass(frozen=True)
class Header:
    """The 16- or 20-byte file header."""

    major: int
    minor: int
    revision: int
    seen: int
    seen_size: int  # 8 or 4 bytes

    @property
    def size(self) -> int:
        return 12 + self.seen_size

    @property
    def transposed(self) -> bool:
        """Connected weights are stored as [inputs][outputs]."""
        return self.major > 1000 or self.minor > 1000

    def to_bytes(self) -> bytes:
        seen = struct.pack("<Q" if self.seen_size == 8 else "<I", self.seen)
        return struct.pack("<3i", self.major, self.minor, self.revision) + seen


def expected_size(model: Model, header_size: int) -> int:
    """Bytes of a complete file for ``model`` behind a ``header_size``-byte
    header: the header, then 4 bytes per float of every layer.  The one place
    this rule is written down (``docs/format.md`` section 2)."""
    return header_size + FLOAT.itemsize * model.param_count


def seen_size(major: int, minor: int, fork: str) -> int:
    """Bytes of ``seen`` for this version, by the fork's reading rule."""
    wide = major * 10 + minor >= 2
    if fork == "pjreddie":
        wide = wide and major < 1000 and minor < 1000
    return 8 if wide else 4


def read_header(data: bytes, path: str, fork: str) -> Header:
    """Parse the header from the first bytes of a file."""
    if len(data) < 12:
        raise WeightsFormatError(f"{path}: {len(data)} bytes is too short for a weights header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<3i", data)
    size = seen_size(major, minor, fork)
    if len(data) < 12 + size:
        raise WeightsFormatError(f"{path}: header needs {12 + size} bytes, file has {len(data)}")
    (seen,) = struct.unpack_from("<Q" if size == 8 else "<I", data, 12)
    return Header(major, minor, revision, seen, size)


def header_revision(path: str | Path) -> tuple[int, int, int] | None:
    """(major, minor, revision) of a file, or None if it is too short."""
    with open(path, "rb") as fp:
        data = fp.read(12)
    return struct.unpack("<3i", data) if len(data) == 12 else None


@dataclass(frozen=True)
class Slot:
    """Where one parameter array of one layer lies in a file."""

    layer: Layer
    param: Param
    offset: int  # byte offset from the start of the file

    @property
    def end(self) -> int:
        return self.offset + 4 * self.param.count

    @property
    def key(self) -> tuple[int, str]:
        return self.layer.index, self.param.name


class WeightsFile:
    """A ``.weights`` file opened against a :class:`~darknet_sparse.format.layout.Model`.

    Nothing is read beyond the header until arrays are asked for; the size
    check against the cfg happens here, before any array exists.
    """

    def __init__(self, path: str | Path, model: Model):
        self.path = Path(path)
        self.model = model
        try:
            self.size = self.path.stat().st_size
            with open(self.path, "rb") as fp:
                head = fp.read(20)
        except OSError as exc:
            raise WeightsFormatError(f"{path}: cannot read weights: {exc.strerror}") from None
        self.header = read_header(head, str(path), model.fork)
        self.slots: list[Slot] = []
        offset = self.header.size
        #: Number of leading layers the file holds (all of them unless partial).
        self.layers_present = len(model.layers)
        for layer in model.layers:
            need = 4 * layer.param_count
            if offset + need > self.size:
                if offset == self.size:
                    self.layers_present = layer.index
                    break
                have = (self.size - offset) // 4
                raise WeightsFormatError(
                    f"{path}: ends inside layer {layer.index} ({layer.type}, {layer.section.where()}): "
                    f"expected {layer.param_count} floats, found {have}"
                    f" (file is {self.size} bytes, the cfg needs {self.expected_size} bytes)")
            for param in layer.params:
                self.slots.append(Slot(layer, param, offset))
                offset += 4 * param.count
        self.payload_end = offset
        #: Bytes after the last layer (kept as they are by every writer).
        self.trailing = self.size - offset

    @property
    def expected_size(self) -> int:
        """File size the full cfg implies with this header."""
        return expected_size(self.model, self.header.size)

    @property
    def partial(self) -> bool:
        return self.layers_present < len(self.model.layers)

    def slots_of(self, layer_index: int) -> list[Slot]:
        return [slot for slot in self.slots if slot.layer.index == layer_index]

    def slot(self, layer_index: int, name: str) -> Slot:
        for slot in self.slots_of(layer_index):
            if slot.param.name == name:
                return slot
        raise NoSuchArrayError(f"{self.path}: layer {layer_index} has no array {name!r}")

    def array(self, slot: Slot) -> np.ndarray:
        """A read-only memmap view of one array, in file order."""
        if slot.param.count == 0:
            return np.zeros(0, FLOAT)
        return np.memmap(self.path, FLOAT, "r", slot.offset, (slot.param.count,))

    def arrays(self, layer_index: int) -> dict[str, np.ndarray]:
        """Every array of one layer by name (read-only memmap views)."""
        return {slot.param.name: self.array(slot) for slot in self.slots_of(layer_index)}

    def chunks(self, slot: Slot, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """The array in pieces of at most ``chunk`` floats (one reused buffer)."""
        buffer = np.empty(min(chunk, slot.param.count), FLOAT)
        with open(self.path, "rb") as fp:
            fp.seek(slot.offset)
            left = slot.param.count
            while left:
                piece = buffer[:min(left, chunk)]
                if fp.readinto(memoryview(piece).cast("B")) != piece.nbytes:
                    raise WeightsFormatError(f"{self.path}: changed while being read")
                left -= piece.size
                yield piece


#: Called on each piece of an array as it is copied; edits it in place.
Edit = Callable[[Slot, np.ndarray], None]


def check_output(source: Path, target: Path, in_place: bool = False) -> None:
    """Refuse to overwrite the input by accident or to write into nowhere."""
    try:
        same = target.exists() and target.samefile(source)
    except OSError:
        same = False
    if same and not in_place:
        raise OutputError(f"{target}: output is the input file; use --in-place to overwrite it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{target}: folder {folder} is not writable")


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` that replaces it, with the mode a
    new file (or the old one) would have, only if the block succeeds."""
    target = Path(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as exc:
        raise OutputError(f"{target}: cannot write in {target.parent}: {exc.strerror}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(target: str | Path) -> Iterator:
    """A binary file object that replaces ``target`` only if all went well."""
    with atomic_path(target) as tmp, open(tmp, "wb", buffering=0) as fp:
        yield fp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(wf: WeightsFile, target: str | Path, edits: Mapping[tuple[int, str], Edit] | None = None,
          in_place: bool = False, chunk: int = CHUNK) -> None:
    """Copy ``wf`` to ``target``, passing the arrays named in ``edits`` through
    their edit function piece by piece; every other byte is copied unchanged.

    Only arrays whose role is prunable (see :mod:`layout`) may be edited: the
    biases and batch-norm statistics are protected here, not by convention.
    """
    edits = dict(edits or {})
    by_key = {slot.key: slot for slot in wf.slots}
    for key in edits:
        if key not in by_key:
            raise NoSuchArrayError(f"layer {key[0]} has no array {key[1]!r} in {wf.path}")
        role = by_key[key].param.role
        if role not in ("weights", "shortcut", "implicit"):
            raise ArrayError(f"layer {key[0]} array {key[1]!r} has role {role!r}: it is never edited")
    target = Path(target)
    check_output(wf.path, target, in_place)
    with open(wf.path, "rb") as src, atomic_output(target) as dst:
        position = 0
        for slot in sorted((by_key[key] for key in edits), key=lambda s: s.offset):
            _copy_range(src, dst, position, slot.offset)
            for piece in wf.chunks(slot, chunk):
                edits[slot.key](slot, piece)
                dst.write(memoryview(piece).cast("B"))
            position = slot.end
        _copy_range(src, dst, position, wf.size)
        _check_written(dst, wf.size, target)


def _check_written(fp, size: int, target: Path) -> None:
    """An unbuffered write may write less than asked (a full disk does that
    once before failing): check the total before the file replaces ``target``."""
    if fp.tell() != size:
        raise OutputError(f"{target}: wrote {fp.tell()} bytes instead of {size} (disk full?)")


def _copy_range(src, dst, start: int, end: int) -> None:
    """Append bytes ``start:end`` of ``src`` to the unbuffered ``dst``, in the
    kernel where it can (``copy_file_range``, as ``cp`` does)."""
    done = start
    try:
        while done < end:
            step = os.copy_file_range(src.fileno(), dst.fileno(), end - done, done)
            if step == 0:
                raise WeightsFormatError(f"{src.name}: changed while being read")
            done += step
    except OSError:  # no copy_file_range between these file systems
        src.seek(done)
        while done < end:
            data = src.read(min(end - done, 4 * CHUNK))
            if not data:
                raise WeightsFormatError(f"{src.name}: changed while being read") from None
            dst.write(data)
            done += len(data)


def write_arrays(wf: WeightsFile, target: str | Path, arrays: Mapping[tuple[int, str], np.ndarray],
                 in_place: bool = False) -> None:
    """Copy ``wf`` with whole arrays replaced (same element count each)."""
    def replace_with(values: np.ndarray) -> Edit:
        flat = np.ascontiguousarray(values, FLOAT).reshape(-1)
        position = [0]

        def edit(slot: Slot, piece: np.ndarray) -> None:
            piece[:] = flat[position[0]:position[0] + piece.size]
            position[0] += piece.size
        return edit

    for key, values in arrays.items():
        count = wf.slot(*key).param.count
        if np.size(values) != count:
            raise ArrayError(f"layer {key[0]} array {key[1]!r} holds {count} floats, got {np.size(values)}")
    write(wf, target, {key: replace_with(values) for key, values in arrays.items()}, in_place)


def new_file(model: Model, target: str | Path, arrays: Mapping[tuple[int, str], np.ndarray] | None = None,
             seen: int = 0) -> None:
    """Write a fresh file for ``model`` as its fork's Darknet would save it
    (missing arrays are zeros).  Used for tests and examples."""
    major, minor, revision = SAVED_VERSION[model.fork]
    header = Header(major, minor, revision, seen, 8)
    arrays = dict(arrays or {})
    with atomic_output(Path(target)) as fp:
        fp.write(header.to_bytes())
        for layer in model.layers:
            for param in layer.params:
                values = arrays.get((layer.index, param.name))
                data = np.zeros(param.count, FLOAT) if values is None else np.asarray(values, FLOAT).reshape(-1)
                if data.size != param.count:
                    raise ArrayError(f"layer {layer.index} array {param.name!r} holds {param.count} floats, "
                                     f"got {data.size}")
                fp.write(data.tobytes())
        _check_written(fp, expected_size(model, header.size), Path(target))
