"""The Streamlit explorer (``weightzoo app``): a multipage app over the public ``zoo`` API.

``Home.py`` (overview) and ``pages/*.py`` are the pages; ``common`` holds the shared plumbing (which
zoo, the cached handle, generation-keyed query caches), ``weights`` the weight computations (layer
statistics, spectra, diffs, 2-D maps) and ``charts`` the plotly figures. See docs/explorer.md.
"""
