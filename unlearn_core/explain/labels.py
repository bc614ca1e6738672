"""One line per latent saying what it is: Neuronpedia's explanation for SAEs it hosts, else the local dashboard's
automatic label. Shared by the Explore page and the ``explore`` command."""

from __future__ import annotations

from collections.abc import Iterable

from unlearn_core.errors import UnlearnError
from unlearn_core.explain.dashboards import Dashboards
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.saes.neuronpedia import NeuronpediaClient

NO_DASHBOARD = "no local dashboard yet (compute it on the latent's detail panel)"


def latent_labels(
    loaded: LoadedSae,
    board: Dashboards | None,
    ids: Iterable[int],
    client: NeuronpediaClient | None = None,
    missing: str = NO_DASHBOARD,
) -> dict[int, str]:
    """The label of each latent in ``ids``. Never raises for network problems: a failed Neuronpedia lookup reads
    "explanation unavailable (reason)". ``client`` is used as given (the app's shared one); without it a client is
    made for this call and closed. ``missing`` is the text when a local SAE has no dashboard."""
    ids = list(dict.fromkeys(int(i) for i in ids))
    if not ids:
        return {}
    if loaded.neuronpedia:
        try:
            if client is not None:
                found = client.explanations(loaded.neuronpedia, ids)
            else:
                with NeuronpediaClient() as own:
                    found = own.explanations(loaded.neuronpedia, ids)
        except UnlearnError as exc:
            return {i: f"explanation unavailable ({exc})" for i in ids}
        return {i: found[i].text() for i in ids}
    if board is None:
        return {i: missing for i in ids}
    return {i: board.latent(i).auto_label for i in ids}
