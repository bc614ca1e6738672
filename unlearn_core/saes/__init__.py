"""The ``saes`` stage: loading sae_lens SAEs (releases, local folders, Gemma Scope 2 layouts) and Neuronpedia.

* :mod:`~unlearn_core.saes.loading` - ``load_sae`` -> ``LoadedSae`` (hook name, layer, width, Neuronpedia id);
* :mod:`~unlearn_core.saes.neuronpedia` - the explanation client (urllib3 retries, disk cache, key protection).
"""
