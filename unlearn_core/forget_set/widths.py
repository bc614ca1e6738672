"""How many latents an SAE has, known without loading its weights (to check a list's latent ids)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from unlearn_core.errors import FeatureListError
from unlearn_core.forget_set.checks import is_int, show
from unlearn_core.models import presets

if TYPE_CHECKING:
    from unlearn_core.forget_set.schema import SaeEntry

_WIDTH_RE = re.compile(r"(?:^|[/_])width_(\d+)([km]?)(?=$|[/_])", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def _preset_widths() -> dict[str, int]:
    widths: dict[str, int] = {}
    for preset in presets.PRESETS.values():
        for fam in preset.sae_families:
            for layer in fam.layers:
                widths[fam.ref(layer)] = fam.width
    return widths


def _cfg_width(directory: Path) -> int | None:
    cfg = directory / "cfg.json"
    if not cfg.is_file():
        return None
    try:
        d_sae = json.loads(cfg.read_text(encoding="utf-8")).get("d_sae")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return d_sae if is_int(d_sae) and d_sae > 0 else None


def sae_width(ref: str) -> int | None:
    """The number of latents of the SAE ``ref`` when it is known without loading weights, else ``None``.

    Tried in order: (1) ``ref`` is a local directory (absolute, relative to the working directory, or relative to
    the project checkout) holding a sae_lens ``cfg.json`` -> its ``d_sae``; (2) ``ref`` is one of the presets' SAE
    family references -> the family's width; (3) ``ref`` contains ``width_16k`` / ``width_65k`` / ``width_262k`` /
    ``width_1m`` ... as a path or name component -> 16384 / 65536 / 262144 / 1048576 ("k" = 1024, "m" = 1024**2;
    such names round a power of two, so a power of two within 3% is preferred: 65k -> 65536, not 66560).
    """
    if not ref:
        return None
    candidates = [Path(ref).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(presets.REPO_ROOT / ref)
    for cand in candidates:
        try:
            if cand.is_dir():
                width = _cfg_width(cand)
                if width is not None:
                    return width
        except OSError:
            continue
    width = _preset_widths().get(ref)
    if width is not None:
        return width
    m = _WIDTH_RE.search(ref)
    if m:
        return _width_from_name(int(m.group(1)), m.group(2).lower())
    return None


def _width_from_name(number: int, unit: str) -> int | None:
    """``width_<number><unit>`` -> latents. Names round powers of two ("65k" = 65536, "262k" = 262144), so a
    power of two within 3% of ``number * 1024**unit`` is taken; otherwise the literal product."""
    value = number * _UNITS[unit]
    if value <= 0:
        return None
    if unit:
        nearest = 1 << round(math.log2(value))
        if abs(nearest - value) <= 0.03 * value:
            return nearest
    return value


def check_latents_fit(entry: SaeEntry, d_sae: int, *, source: str | None = None) -> None:
    """Check every latent id of ``entry`` is below ``d_sae`` (the loaded SAE's real width).

    Raises :class:`FeatureListError` listing the offending ids.
    """
    bad = [lat.id for lat in entry.latents if lat.id >= d_sae]
    if not bad:
        return
    shown = ", ".join(str(i) for i in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    prefix = f"{source}: " if source else ""
    raise FeatureListError(
        f"{prefix}SAE {show(entry.sae)} ({entry.hook_name}) has {d_sae} latents (ids 0 to {d_sae - 1}), "
        f"but the feature list uses {len(bad)} id{'s' if len(bad) > 1 else ''} out of range: {shown}"
    )
