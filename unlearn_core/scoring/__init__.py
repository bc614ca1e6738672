"""The ``scoring`` stage: batched forward passes under a condition's hooks.

* :mod:`~unlearn_core.scoring.batching` - BOS, length-sorted right-padded batches (fewest padded tokens), per-token
  scores;
* :mod:`~unlearn_core.scoring.vocab_logprobs` - log p(target) over the vocabulary in cache-sized tiles (online
  log-sum-exp, exact argmax hits);
* :mod:`~unlearn_core.scoring.perplexity` - the study's perplexity (batched, streamed, one at a time);
* :mod:`~unlearn_core.scoring.probes` - cloze/QA probes (top-1, mean log-probability);
* :mod:`~unlearn_core.scoring.choices` - multiple-choice scoring as lm-eval does (acc, acc_norm, calibrated);
* :mod:`~unlearn_core.scoring.generation` - greedy/seeded generation, batched over prompts x conditions;
* :mod:`~unlearn_core.scoring.activations` - activations at hooks, the forward stopped after the deepest one.
"""
