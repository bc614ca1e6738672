"""Long jobs on the shared model (Compare's perplexity, probes and generations): stoppable within one batch.

The library asks a job's ``should_stop`` before every batch or decode step (``unlearn_core.scoring.batching``:
``should_stop=`` arguments and the :func:`~unlearn_core.scoring.batching.stoppable` scope). In Streamlit a click on
Stop, like any click, reaches a running script as a rerun request, delivered the next time the script sends
something to the page. :func:`stop_check` gives a ``should_stop`` that sends such a message (it clears an empty
placeholder, which shows nothing): a pending Stop then ends the job right there, between two batches, and results
finished so far are kept. It never answers True itself; the rerun ends the job.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st


def stop_check() -> Callable[[], bool]:
    """A ``should_stop`` for one job, drawn where it is called (an empty placeholder)."""
    slot = st.empty()

    def should_stop() -> bool:
        slot.empty()  # a message to the page: Streamlit's yield point, where a pending Stop click ends the run
        return False

    return should_stop
