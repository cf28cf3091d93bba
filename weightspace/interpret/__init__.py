"""The weight-diff interpreter: say what a fine-tune changed, from the weights of the child and its parent.

    from zoo import Zoo
    from weightspace.interpret import DiffInterpreter, load_diffs, split_by_parent, explain_diff
    z = Zoo.open()
    ds = load_diffs(z, "digits-mlp-diffs")                      # labelled diffs (child - parent)
    tr, te = split_by_parent(ds.parent_ids, 0.2, seed=0)        # whole parents held out
    interp = DiffInterpreter("np", {"epochs": 60}).fit(ds.subset(tr))
    interp.score(ds.subset(te))                                 # per-field accuracy, backdoor AUROC, ...
    rec = store_interpreter(z, interp, trained_on=ds.subset(tr))  # a zoo model (op train.interpreter)
    explain_diff(z, "digits-mlp-diffs/00012/e006").sentence     # parent from the lineage

Modules: ``fields`` (what is predicted), ``data`` (labelled diffs, one pair's diff), ``heads``
(multi-head training on any torch encoder), ``model`` (:class:`DiffInterpreter`), ``render``
(description and sentence), ``metrics`` (held-out scores), ``store`` (the zoo: interpreters as
models, predictions as a derived table, :func:`explain_diff`), ``cli`` (``weightzoo explain-diff``,
``weightzoo interpret``).
"""

from weightspace.interpret import pair  # noqa: F401  (registers the np_diff encoder)
from weightspace.interpret.data import DiffSet, lineage_parent, load_diffs, pair_diff, split_by_parent
from weightspace.interpret.fields import DEFAULT_FIELDS, FIELDS, Field
from weightspace.interpret.heads import HeadLayout, multihead
from weightspace.interpret.model import VIEWS, DiffInterpreter, load_interpreter
from weightspace.interpret.render import Description, describe, sentence
from weightspace.interpret.run import TrainResult, train_interpreter
from weightspace.interpret.store import (
    Explanation,
    explain_diff,
    find_interpreter,
    interpreter_from_zoo,
    store_interpreter,
    write_predictions,
)

__all__ = [
    "DiffSet", "load_diffs", "lineage_parent", "pair_diff", "split_by_parent",
    "Field", "FIELDS", "DEFAULT_FIELDS", "HeadLayout", "multihead",
    "DiffInterpreter", "VIEWS", "load_interpreter", "Description", "describe", "sentence",
    "TrainResult", "train_interpreter", "Explanation", "explain_diff", "find_interpreter", "interpreter_from_zoo", "store_interpreter", "write_predictions",
]  # fmt: skip
