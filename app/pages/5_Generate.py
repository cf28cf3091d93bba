"""Generate: sampling new models from trained weight generators (not built yet: says so plainly)."""

import importlib.util
import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from app import common as C  # noqa: E402

z = C.page("Generate", need_models=False)
if z is None:
    st.stop()

built = [m for m in ("generators.diffusion", "generators.flow") if importlib.util.find_spec(m) is not None]
st.info(
    "Weight generators are not built yet"
    + (f" (found {', '.join(built)}, but no sampling API for the explorer)" if built else " (the `generators` package is empty)")
    + ".\n\nWhen they are, this page will sample new models of a population from a trained diffusion or "
    "flow-matching generator, evaluate them (accuracy, and novelty: distance to the nearest training checkpoint "
    "after alignment) and save them to the zoo with lineage (op `generate.*`)."
)
st.markdown(
    "Meanwhile: **Align and merge** makes new models from existing ones (merging, with lineage), and the "
    "**Population map** shows where a population's models lie in weight space."
)
