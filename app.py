"""SAE unlearning workbench: `streamlit run app.py`.

The pages live in `pages/`; each draws the shared sidebar (model, SAEs, intervention) through
`app_support.shell.page_setup`. All model logic lives in `unlearn_core`.
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="SAE unlearning workbench", page_icon=":material/cleaning_services:", layout="wide")
pages = [
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("pages/forget_set.py", title="Forget set", icon=":material/checklist:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
]
st.navigation(pages).run()
