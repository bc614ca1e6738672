"""The ``training`` stage: the bundled SAEs - corpus, activation cache, sae_lens training, quality, shipping.

* :mod:`~unlearn_core.training.corpus` - the seeded training mix; ``activation_cache`` - 16-bit memmaps;
* :mod:`~unlearn_core.training.trainer` - sae_lens' ``SAETrainer`` with BatchTopK, resumable checkpoints;
* :mod:`~unlearn_core.training.quality` - L0, FVE, CE loss recovered, dead latents; ``release`` - cards, folders;
* :mod:`~unlearn_core.training.build` - ``train-sae`` end to end.
"""
