"""SAE unlearning workbench: `streamlit run app.py`.

The pages live in `pages/`. The sidebar they share (model, SAEs, intervention) is drawn here, once per run, around
the chosen page; pages read its choices through `app_support.shell` and keep what they remember in the typed
session state of `app_support.state`. All model logic lives in `unlearn_core`.
"""

from __future__ import annotations

import streamlit as st

from app_support import shell
from unlearn_core.models.patches import keep_freed_memory

keep_freed_memory()  # process-wide allocator setting (a speed patch; idempotent across reruns)
st.set_page_config(page_title="SAE unlearning workbench", page_icon=":material/cleaning_services:", layout="wide")
page = st.navigation([
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("pages/forget_set.py", title="Forget set", icon=":material/checklist:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
])
with shell.frame():
    page.run()
