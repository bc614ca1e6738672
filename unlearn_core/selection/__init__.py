"""The ``selection`` stage: choosing latents to forget from their firing statistics.

* :mod:`~unlearn_core.selection.stats` - per-latent firing counts and activations over a corpus (cached on disk);
* :mod:`~unlearn_core.selection.rules` - the ``ratio`` and ``frequency`` rules;
* :mod:`~unlearn_core.selection.suggest` - statistics -> rule -> a feature list (``select``, Suggest latents).
"""
