"""The one intervention primitive: edit chosen SAE latents inside a forward pass, scoped to that pass.

For an activation x at the SAE's hook and its latents f = encode(x), an edit f -> f' gives

* error term kept (default):  x' = x + decode(f') - decode(f)   (an empty edit leaves x exactly unchanged)
* ``replace`` (the reference study): x' = decode(f')             (adds the SAE's reconstruction error)

Edits (``zero``, ``clamp``, ``scale``) touch only the chosen latents, so with the error term kept only those
latents need encoding and the change is a small matrix product: the full SAE is never run. The first position
(BOS) is left alone. Hooks exist only inside :func:`intervened`; they are removed on exit, even on error.

A :class:`~unlearn_core.ablation.gating.Gate` (``Intervention.gate``) restricts the edit to the positions where the
chosen latents' summed activation exceeds a calibrated threshold; the rest are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from unlearn_core.ablation.gating import Gate
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae

EditMode = Literal["zero", "clamp", "scale"]
Mode = Literal["zero", "clamp", "scale", "replace"]
HookSite = Literal["trained", "resid_pre"]
Hook = tuple[str, Callable[..., torch.Tensor]]

MODES: tuple[str, ...] = ("zero", "clamp", "scale", "replace")
DEFAULT_VALUES = {"zero": 0.0, "clamp": 10.0, "scale": 0.0, "replace": 0.0}
"""Default strength per mode: clamp sets active latents to -value; scale multiplies by value."""
HOOK_SITES: tuple[str, ...] = ("trained", "resid_pre")

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SPEC_RE = re.compile(rf"^(zero|replace|clamp:({_NUMBER})(x?)|scale:({_NUMBER}))$")
_DICT_KEYS = frozenset({"mode", "value", "relative", "hook_site", "gate"})


@dataclass(frozen=True)
class Intervention:
    """How chosen latents are edited.

    ``mode="replace"`` is the reference study's behaviour (zero the latents, replace the activation by the SAE
    reconstruction); ``hook_site="resid_pre"`` is its hook placement. Both exist only to reproduce that study.
    """

    mode: Mode = "zero"
    value: float | None = None
    hook_site: HookSite = "trained"
    relative: bool = False
    """clamp only: set each active latent to ``-value x`` its reference activation (``LatentSelection.reference``,
    its mean activation on the forget text) instead of ``-value`` for all."""
    gate: Gate | None = None
    """Edit only where the chosen latents' summed activation exceeds the gate's per-SAE threshold (None: everywhere)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown intervention mode {self.mode!r}; choose one of {list(MODES)}")
        if self.hook_site not in HOOK_SITES:
            raise InputError(f"unknown hook site {self.hook_site!r}; choose 'trained' or 'resid_pre'")
        if self.value is not None:
            if self.mode in ("zero", "replace"):
                raise InputError(f"mode {self.mode!r} takes no value (it sets the latents to 0)")
            if not math.isfinite(self.value):
                raise InputError(f"intervention value must be a finite number, got {self.value}")
        if self.mode == "clamp" and self.strength < 0:
            raise InputError("clamp value c must be >= 0 (active latents are set to -c)")
        if self.relative and self.mode != "clamp":
            raise InputError("only clamp can be relative (scaled to each latent's reference activation)")
        if self.gate is not None and not isinstance(self.gate, Gate):
            raise InputError("an intervention's gate must be a Gate")

    @property
    def strength(self) -> float:
        return DEFAULT_VALUES[self.mode] if self.value is None else float(self.value)

    # ---- conversions: the one place an intervention is read from or written to text, JSON and specs

    @classmethod
    def from_spec(cls, spec: str) -> Intervention:
        """``zero`` | ``clamp:C`` (active latents -> -C) | ``clamp:Cx`` (-> -C x their mean activation on forget
        text) | ``scale:S`` | ``replace`` (the study's recipe: zero, no error term, at resid_pre); any of them
        followed by ``@gate`` or ``@gate:Q`` is gated (uncalibrated: see :mod:`~unlearn_core.ablation.gating`)."""
        spec = spec.strip()
        spec, at, gate_text = spec.partition("@")
        if at:
            base = cls.from_spec(spec)
            return dataclasses.replace(base, gate=Gate.from_spec(gate_text.strip()))
        match = _SPEC_RE.match(spec)
        if match is None:
            raise InputError(f"cannot read intervention {spec!r}; use zero, clamp:10, clamp:4x, scale:0.5 or replace")
        if spec == "zero":
            return cls("zero")
        if spec == "replace":
            return cls("replace", hook_site="resid_pre")
        if match.group(2) is not None:
            return cls("clamp", float(match.group(2)), relative=bool(match.group(3)))
        return cls("scale", float(match.group(4)))

    def to_spec(self) -> str:
        """The inverse of :meth:`from_spec` (the hook site is implied: ``replace`` means the study's recipe)."""
        gate = self.gate.spec_suffix() if self.gate is not None else ""
        if self.mode == "clamp":
            return f"clamp:{self.strength:g}{'x' if self.relative else ''}{gate}"
        if self.mode == "scale":
            return f"scale:{self.strength:g}{gate}"
        return self.mode + gate

    def to_dict(self) -> dict[str, Any]:
        """The ``"intervention"`` object of a feature list (see docs/feature-lists.md); ``"gate"`` only when gated."""
        out: dict[str, Any] = {"mode": self.mode, "value": self.value, "relative": self.relative,
                               "hook_site": self.hook_site}
        if self.gate is not None:
            out["gate"] = self.gate.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "intervention") -> Intervention:
        """Read and validate an ``"intervention"`` object; errors name ``source``."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: 'intervention' must be an object like {{\"mode\": \"clamp\", \"value\": 4}}")
        unknown = set(data) - _DICT_KEYS
        if unknown:
            raise InputError(f"{source}: unknown intervention field(s) {sorted(unknown)}")
        value = data.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"{source}: intervention value must be a number")
        relative = data.get("relative", False)
        if not isinstance(relative, bool):
            raise InputError(f"{source}: intervention 'relative' must be true or false")
        gate = None if data.get("gate") is None else Gate.from_dict(data["gate"], source)
        try:
            return cls(
                mode=data.get("mode", "zero"),
                value=None if value is None else float(value),
                relative=relative,
                hook_site=data.get("hook_site", "trained"),
                gate=gate,
            )
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    @property
    def keeps_error_term(self) -> bool:
        return self.mode != "replace"

    @property
    def edit_mode(self) -> EditMode:
        return "zero" if self.mode == "replace" else self.mode

    def describe(self) -> str:
        if self.mode == "zero":
            text = "zero-ablate latents, error term kept"
        elif self.mode == "clamp" and self.relative:
            text = f"clamp active latents to -{self.strength:g} x their mean activation on forget text, error term kept"
        elif self.mode == "clamp":
            text = f"clamp active latents to -{self.strength:g}, error term kept"
        elif self.mode == "scale":
            text = f"scale latents by {self.strength:g}, error term kept"
        else:
            text = "REPRODUCTION ONLY: zero latents and replace activation by SAE reconstruction (no error term)"
        if self.gate is not None:
            text += f"; {self.gate.describe()}"
        if self.hook_site == "resid_pre":
            text += "; REPRODUCTION ONLY: hooked at resid_pre instead of the SAE's trained site"
        return text


@dataclass(frozen=True)
class LatentSelection:
    """Latents of one SAE to intervene on (possibly none: then only the SAE itself is spliced in)."""

    sae: LoadedSae
    latents: tuple[int, ...]
    reference: tuple[float, ...] | None = None
    """Per-latent reference activation (mean when active on the forget text), used by relative clamps."""

    def __post_init__(self) -> None:
        width = self.sae.width
        bad = [i for i in self.latents if not 0 <= int(i) < width]
        if bad:
            raise InputError(f"latent ids {bad[:10]} are out of range for SAE {self.sae.ref} (width {width})")
        if len(set(self.latents)) != len(self.latents):
            raise InputError(f"duplicate latent ids in the selection for SAE {self.sae.ref}")
        if self.reference is not None:
            if len(self.reference) != len(self.latents):
                raise InputError(f"{len(self.reference)} reference activations for {len(self.latents)} latents")
            if not all(math.isfinite(r) and r >= 0 for r in self.reference):
                raise InputError("reference activations must be finite and >= 0")

    def clamp_values(self, intervention: Intervention) -> float | torch.Tensor:
        """What active latents are clamped to (negated): one number, or one per latent for a relative clamp."""
        if not intervention.relative:
            return intervention.strength
        if self.reference is None:
            raise InputError(
                f"a relative clamp needs each latent's reference activation, which SAE {self.sae.ref}'s entry lacks "
                "(feature lists written by `select` carry them); use an absolute clamp value instead"
            )
        ref = torch.tensor(self.reference, dtype=self.sae.sae.W_dec.dtype, device=self.sae.sae.W_dec.device)
        return intervention.strength * ref


def hook_name_for(selection: LatentSelection, hook_site: HookSite) -> str:
    """Where the edit is applied: the SAE's own hook, or (reproduction only) ``hook_resid_pre`` of its layer."""
    if hook_site == "trained":
        return selection.sae.hook_name
    return f"blocks.{selection.sae.layer}.hook_resid_pre"


def encode_latents(sae: Any, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Activations of only the given latents, equal to ``sae.encode(x)[..., latents]``.

    JumpReLU and ReLU SAEs without run-time normalisation are computed for the subset directly;
    other architectures (TopK, normalising SAEs) fall back to the full encoder.
    """
    subset = SubsetEncoder.for_sae(sae, latents)
    return subset(x) if subset is not None else sae.encode(x)[..., latents]


@dataclass(frozen=True)
class SubsetEncoder:
    """The encoder of a JumpReLU/ReLU SAE restricted to some latents, with its weights gathered once."""

    w_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec_in: torch.Tensor | None
    threshold: torch.Tensor | None
    dtype: torch.dtype

    @classmethod
    def for_sae(cls, sae: Any, latents: torch.Tensor) -> SubsetEncoder | None:
        arch = sae.cfg.architecture()
        if not (_is_plain_affine(sae) and arch in ("jumprelu", "standard")):
            return None
        return cls(
            w_enc=sae.W_enc[:, latents].detach(),
            b_enc=sae.b_enc[latents].detach(),
            b_dec_in=sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None,
            threshold=sae.threshold[latents].detach() if arch == "jumprelu" else None,
            dtype=sae.dtype,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = x.to(self.dtype)
        if self.b_dec_in is not None:
            sae_in = sae_in - self.b_dec_in
        pre = sae_in @ self.w_enc + self.b_enc
        acts = torch.relu(pre)
        if self.threshold is not None:
            acts = acts * (pre > self.threshold).to(acts.dtype)
        return acts


def edit_latents(acts: torch.Tensor, mode: EditMode, value: float | torch.Tensor) -> torch.Tensor:
    """Apply an edit to latent activations: zero them, clamp the active ones to ``-value``, or scale them."""
    if mode == "zero":
        return torch.zeros_like(acts)
    if mode == "clamp":
        return torch.where(acts > 0, -torch.as_tensor(value, dtype=acts.dtype, device=acts.device), acts)
    if mode == "scale":
        return acts * value
    raise InputError(f"unknown edit mode {mode!r}")


def _is_plain_affine(sae: Any) -> bool:
    """True when decode(f) = f @ W_dec + b_dec exactly (no run-time normalisation or reshaping)."""
    return sae.cfg.normalize_activations == "none" and sae.cfg.reshape_activations == "none"


def make_hook(
    selection: LatentSelection,
    intervention: Intervention,
    protect_first_position: bool = True,
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A TransformerLens forward hook applying ``intervention`` to ``selection`` on a [batch, pos, d] activation.

    ``protect_first_position`` leaves position 0 (BOS) untouched; set it False for incremental decoding steps,
    where position 0 of the chunk is a generated token.
    """
    sae = selection.sae.sae
    index = torch.tensor(selection.latents, dtype=torch.long, device=sae.W_dec.device)
    mode = intervention.edit_mode
    value = selection.clamp_values(intervention) if mode == "clamp" and selection.latents else intervention.strength
    start = 1 if protect_first_position else 0
    subset = SubsetEncoder.for_sae(sae, index) if intervention.keeps_error_term else None
    w_dec_subset = sae.W_dec[index].detach() if subset is not None else None
    gated = intervention.gate is not None and bool(selection.latents)  # nothing chosen: no gate to ask
    threshold = intervention.gate.threshold_for(selection.sae.hook_name) if gated else None  # type: ignore[union-attr]

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TransformerLens signature
        x = activation[:, start:]
        if x.shape[1] == 0:
            return activation
        if intervention.keeps_error_term:
            if index.numel() == 0:
                return activation
            if subset is not None:
                before = subset(x)
                delta = (edit_latents(before, mode, value) - before) @ w_dec_subset
            elif _is_plain_affine(sae):
                before = sae.encode(x)[..., index]
                delta = (edit_latents(before, mode, value) - before) @ sae.W_dec[index]
            else:
                # Normalising SAEs keep per-call state from encode() for decode(), so pair each decode with
                # its own encode.
                feats = sae.encode(x)
                recon = sae.decode(feats)
                edited = sae.encode(x)
                before = edited[..., index]
                edited[..., index] = edit_latents(before, mode, value)
                delta = sae.decode(edited) - recon
            new_x = x + delta.to(x.dtype)
        else:
            feats = sae.encode(x)
            before = feats[..., index].clone()
            if index.numel():
                feats[..., index] = edit_latents(feats[..., index], mode, value)
            new_x = sae.decode(feats).to(x.dtype)
        if threshold is not None:
            # the gate: edit only where the chosen latents' summed activation (before the edit) is above threshold
            new_x = torch.where((before.sum(dim=-1) > threshold)[..., None], new_x, x)
        out = activation.clone()
        out[:, start:] = new_x
        return out

    return hook


def intervention_hooks(
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    protect_first_position: bool = True,
) -> list[Hook]:
    """``(hook_name, hook_fn)`` pairs for ``model.run_with_hooks`` / ``model.hooks``: one per SAE."""
    return [
        (hook_name_for(sel, intervention.hook_site), make_hook(sel, intervention, protect_first_position))
        for sel in selections
    ]


@contextlib.contextmanager
def intervened(lm: LoadedModel, hooks: Sequence[Hook]) -> Iterator[Any]:
    """Hold the model exclusively with ``hooks`` attached; yields the model. Hooks are gone on exit, even on error.

    An empty hook list gives the plain model (still held exclusively, so no other caller's hooks can be attached
    meanwhile). Hold it for one forward pass (one batch) at a time, never around a loop over batches: the model's
    lock is fair, so callers waiting for it then get their turn between two batches of a long job.
    """
    with lm.exclusive() as model:
        if not hooks:
            yield model
            return
        with model.hooks(fwd_hooks=list(hooks)):
            yield model
