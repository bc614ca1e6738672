"""The ``data`` stage: the text sets, probe sets and quizzes shipped with the package, and loaders for users' files.

* :mod:`~unlearn_core.data.texts` - WikiText-2, the fan-wiki corpus, their dev/test splits, text files;
* :mod:`~unlearn_core.data.probes` - cloze and QA probes (the project's cloze sets with dev/test splits, NQ-open, users' files);
* :mod:`~unlearn_core.data.quizzes` - multiple-choice quizzes (HP, general, adjacent fiction), paraphrases and
  translations;
* :mod:`~unlearn_core.data.familiarity` - HP completion prompts and the term list that marks familiarity.
"""
