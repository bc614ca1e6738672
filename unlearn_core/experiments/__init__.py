"""The ``experiments`` stage: what the CLI and the Compare page run, and the typed results they produce.

* :mod:`~unlearn_core.experiments.evaluate` - a feature list -> every condition scored (``evaluate``);
* :mod:`~unlearn_core.experiments.results` - typed results (JSON round trip) and the one measuring loop;
* :mod:`~unlearn_core.experiments.controls` - latent profiles for the matched random control;
* :mod:`~unlearn_core.experiments.attacks` / ``linear_probe`` - can the forgotten knowledge be recovered;
* :mod:`~unlearn_core.experiments.familiarity` - HP terms in greedy continuations;
* :mod:`~unlearn_core.experiments.compare` - the Compare page's cells and cache keys;
* :mod:`~unlearn_core.experiments.sweep` / ``plots`` / ``report`` - sweeps, Pareto fronts, Markdown reports;
* :mod:`~unlearn_core.experiments.bench` - the speed benchmark.
"""
