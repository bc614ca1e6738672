"""The ``selection`` stage: choosing latents to forget from their firing statistics.

* :mod:`~unlearn_core.selection.stats` - per-latent firing counts and activations over a corpus (cached on disk);
* :mod:`~unlearn_core.selection.rules` - the ``ratio`` and ``frequency`` rules;
* :mod:`~unlearn_core.selection.attribution` - the ``attribution`` method (gradient x activation of dev answers);
* :mod:`~unlearn_core.selection.gating` - calibrating a gated intervention's thresholds on dev retain text;
* :mod:`~unlearn_core.selection.suggest` - statistics -> rule -> a feature list (``select``, Suggest latents).
"""
