"""Weight-space encoders: one encoder per file, registered by name.

    from weightspace.encoders import make_encoder, encoders, load_encoder
    enc = make_encoder("np", task="regression", epochs=50).fit(X_train, y_train)
    enc.predict(X_test); enc.transform(X_test); enc.save("enc/"); load_encoder("enc/")

Registered: ``np`` (permutation-equivariant NP/DWS-style), ``gmn`` (graph metanetwork over neural graphs,
torch_geometric, imported on first use), ``probe`` (learned probe inputs run through the models,
ProbeGen-style), ``flat_mlp`` (baseline), ``stats`` (statistics features + scikit-learn), ``np_diff`` (NP over
weight diffs with per-tensor statistics, for the diff interpreter: weightspace.interpret.pair, imported on first use).
"""

from weightspace.encoders import flat_mlp, np_encoder, probe, stats  # noqa: F401  (registers the encoders)
from weightspace.encoders.base import TASKS, Encoder, TorchEncoder, load_encoder
from weightspace.encoders.flat_mlp import FlatMLPEncoder
from weightspace.encoders.np_encoder import NPEncoder
from weightspace.encoders.probe import ProbeEncoder
from weightspace.encoders.registry import encoders, get_encoder, make_encoder, register_encoder, register_lazy
from weightspace.encoders.stats import StatsEncoder, weight_statistics

# torch_geometric costs seconds to import: "gmn" is imported on first use (weightspace.encoders.gmn.GMNEncoder)
register_lazy("gmn", "weightspace.encoders.gmn", "install it with pip install 'weightzoo[graph]' (torch_geometric)")
# the diff interpreter's NP for weight diffs lives with the interpreter (weightspace.interpret.pair)
register_lazy("np_diff", "weightspace.interpret.pair")

__all__ = [
    "Encoder",
    "TorchEncoder",
    "NPEncoder",
    "ProbeEncoder",
    "FlatMLPEncoder",
    "StatsEncoder",
    "weight_statistics",
    "encoders",
    "get_encoder",
    "make_encoder",
    "register_encoder",
    "register_lazy",
    "load_encoder",
    "TASKS",
]
