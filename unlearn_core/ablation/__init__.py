"""The ``ablation`` stage: editing SAE latents inside a forward pass, and the conditions every evaluation compares.

* :mod:`~unlearn_core.ablation.interventions` - the one primitive (``Intervention``, ``LatentSelection``, scoped
  hooks via ``intervened``): error term kept, BOS untouched, hooks gone on exit;
* :mod:`~unlearn_core.ablation.conditions` - baseline / ablated / per-layer / reconstruction-only / random controls
  (unmatched and matched), one builder and one set of names.
"""
