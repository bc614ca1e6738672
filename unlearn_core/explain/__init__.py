"""The ``explain`` stage: what a latent means - Explore's statistics on prompts and the local latent dashboards.

* :mod:`~unlearn_core.explain.explore` - one forward for all SAEs, top latents, per-token values;
* :mod:`~unlearn_core.explain.dashboards` (+ ``dashboard_build``, ``dashboard_cache``) - top contexts, promoted
  tokens, frequency by corpus, automatic labels; shipped for bundled SAEs, computed and cached for others.
"""
