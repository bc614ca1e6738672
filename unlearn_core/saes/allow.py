"""Which SAEs a shared process (the app) agrees to load, and how much loading one would download.

An uploaded feature list can name any SAE, and a loaded SAE stays in memory for the life of the process (a
1M-latent release is tens of GB). A shared process therefore loads only the SAEs of its preset's families (each at
the family's layers) and the folders shipped under ``saes/`` in the checkout; anything else is for the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable

from unlearn_core.errors import InputError, ModelUnavailableError
from unlearn_core.models.presets import REPO_ROOT, ModelPreset, get_preset
from unlearn_core.saes.loading import release_lookup, resolve_local_path, split_release_ref

SHIPPED_SAES = REPO_ROOT / "saes"
"""Where the checkout's own SAEs live (``saes/<model>/<sae folder>``)."""


def shipped_sae_refs() -> set[str]:
    """Repo-relative references of the SAE folders shipped under ``saes/`` (e.g. ``saes/gemma-3-270m/layer_12_width_4k``)."""
    if not SHIPPED_SAES.is_dir():
        return set()
    return {
        path.parent.relative_to(REPO_ROOT).as_posix()
        for name in ("cfg.json", "params.safetensors")
        for path in SHIPPED_SAES.glob(f"*/*/{name}")
    }


def allowed_sae_refs(preset: str | ModelPreset) -> set[str]:
    """Every SAE reference of the preset's SAE families at their layers, plus the shipped folders under ``saes/``."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    refs = {family.ref(layer) for family in preset.sae_families for layer in family.layers}
    return refs | shipped_sae_refs()


def check_sae_allowed(ref: str, preset: str | ModelPreset, extra_allowed: Iterable[str] = ()) -> None:
    """Raise :class:`InputError` unless ``ref`` is one of :func:`allowed_sae_refs` or ``extra_allowed``.

    Local references are compared by the folder they point to, so an absolute path to a shipped folder is allowed
    like its repo-relative reference.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    allowed = allowed_sae_refs(preset) | set(extra_allowed)
    if ref in allowed:
        return
    folder = resolve_local_path(ref)
    if folder is not None and folder in {resolve_local_path(r) for r in allowed}:
        return
    families = ", ".join(f.name for f in preset.sae_families)
    raise InputError(
        f"SAE {ref} is not one of this preset's SAE families ({families}, or the SAEs shipped in saes/); "
        "the app loads only those; use the CLI for other SAEs"
    )


def sae_download_size(ref: str, online: bool = False) -> int | None:
    """Bytes that loading ``ref`` would download, for an optional "this is big, load it?" confirmation.

    0 for a local folder and for a release whose files are already in the Hugging Face cache (known offline). For
    any other release, ``online=True`` asks the hub for the sizes of the SAE's files (``HF_HUB_OFFLINE`` is
    honoured); otherwise, or when that fails, or for a reference that names no release: None (unknown).
    """
    if resolve_local_path(ref) is not None:
        return 0
    try:
        release, sae_id = split_release_ref(ref)
    except ModelUnavailableError:
        return None
    lookup = release_lookup(release)
    if lookup is None or sae_id not in lookup.saes_map:
        return None
    folder = lookup.saes_map[sae_id].strip("/")
    if _cached_on_disk(lookup.repo_id, folder):
        return 0
    return _hub_size(lookup.repo_id, folder) if online else None


def _in_folder(path_in_repo: str, folder: str) -> bool:
    return path_in_repo == folder or path_in_repo.startswith(folder + "/")


def _cached_on_disk(repo_id: str, folder: str) -> bool:
    """Whether the Hugging Face cache holds the weights (a ``.safetensors`` file) of ``folder`` in ``repo_id``."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except (CacheNotFound, OSError, ValueError):
        return False
    for repo in info.repos:
        if repo.repo_id != repo_id or repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for file in revision.files:
                rel = file.file_path.relative_to(revision.snapshot_path).as_posix()
                if _in_folder(rel, folder) and rel.endswith(".safetensors"):
                    return True
    return False


def _hub_size(repo_id: str, folder: str) -> int | None:
    """The total size of the files under ``folder`` in ``repo_id``, from the hub's metadata; None on any failure."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = HfApi().list_repo_tree(repo_id, path_in_repo=folder, recursive=True)
        sizes = [entry.size for entry in entries if isinstance(entry, RepoFile)]
    except Exception:  # noqa: BLE001 - offline, gated, unknown repo, network: the size is simply unknown
        return None
    return sum(sizes) if sizes else None
