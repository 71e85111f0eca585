"""Opening a model: which fork's layout a cfg and weights file follow, the
cfg beside a weights file, and the :class:`WeightsFile` of the two."""
from __future__ import annotations

from pathlib import Path

from ..errors import CfgError, WeightsFormatError
from .cfg import Section, read_cfg
from .layout import FORKS, Model, alexeyab_markers, build_model
from .weightsfile import WeightsFile, expected_size, header_revision, seen_size


def resolve_fork(sections: list[Section], fork: str = "auto", weights: str | Path | None = None) -> tuple[str, str]:
    """The fork to read with, and why: AlexeyAB-only cfg features win; then,
    where the forks' layouts differ for this cfg, the one whose size matches
    the file; then the header's revision (pjreddie saves 0.2.0, AlexeyAB 0.2.5)."""
    if fork != "auto":
        if fork not in FORKS:
            raise CfgError(f"unknown fork {fork!r}: expected auto, {', '.join(FORKS)}")
        return fork, "as requested"
    markers = alexeyab_markers(sections)
    if markers:
        return "alexeyab", "cfg uses " + ", ".join(markers[:3]) + (" ..." if len(markers) > 3 else "")
    version = header_revision(weights) if weights is not None and Path(weights).is_file() else None
    if version is None:
        return "pjreddie", "no AlexeyAB-only features"
    matching = [name for name in FORKS if _expected_size(sections, name, version) == Path(weights).stat().st_size]
    if len(matching) == 1 and _expected_size(sections, "pjreddie", version) != _expected_size(
            sections, "alexeyab", version):
        return matching[0], "only its layout matches the file size"
    if version[:3] == (0, 2, 5):
        return "alexeyab", "header version 0.2.5"
    return "pjreddie", f"header version {'.'.join(map(str, version))}"


def _expected_size(sections: list[Section], fork: str, version: tuple[int, int, int]) -> int | None:
    """File size the cfg implies under ``fork``, or None if it cannot parse there."""
    try:
        model = build_model(sections, fork)
    except CfgError:
        return None
    return expected_size(model, 12 + seen_size(version[0], version[1], fork))


def load_model(cfg: str | Path, fork: str = "auto", weights: str | Path | None = None) -> Model:
    """Parse a cfg and infer every layer's shapes and parameter arrays."""
    sections = read_cfg(cfg)
    chosen, reason = resolve_fork(sections, fork, weights)
    model = build_model(sections, chosen)
    model.notes.append(f"fork: {chosen} ({reason})")
    return model


def find_cfg(weights: str | Path) -> Path:
    """``MODEL.cfg`` beside ``MODEL.weights`` (also ``MODEL.sparse.weights``
    -> ``MODEL.cfg``)."""
    weights = Path(weights)
    stem = weights.name[:-len(".weights")] if weights.name.endswith(".weights") else weights.stem
    candidates = [weights.with_name(stem + ".cfg")]
    while "." in stem:
        stem = stem.rsplit(".", 1)[0]
        candidates.append(weights.with_name(stem + ".cfg"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CfgError(f"{weights}: no cfg given and none found beside it (looked for "
                   f"{', '.join(c.name for c in candidates)}); pass --cfg")


def load(cfg: str | Path | None, weights: str | Path, fork: str = "auto") -> WeightsFile:
    """Open a weights file against its cfg (found beside it when ``cfg`` is None).

    Raises :class:`CfgError` or :class:`WeightsFormatError` before any array
    is read when the two do not match.
    """
    if not Path(weights).is_file():
        raise WeightsFormatError(f"{weights}: no such weights file")
    cfg = find_cfg(weights) if cfg is None else cfg
    return WeightsFile(weights, load_model(cfg, fork, weights))
