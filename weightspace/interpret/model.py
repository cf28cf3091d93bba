"""The weight-diff interpreter: an encoder over the diff view with one head per field.

    from weightspace.interpret import DiffInterpreter, load_diffs, split_by_parent
    ds = load_diffs(zoo, "digits-mlp-diffs")
    tr, te = split_by_parent(ds.parent_ids, 0.2, seed=0)            # held-out parents
    interp = DiffInterpreter("np", {"epochs": 60}).fit(ds.subset(tr))
    interp.score(ds.subset(te))     # {"acc_kind": .., "backdoor_auroc": .., "target_if_detected": .., ...}
    interp.describe(ds.subset(te))[0].sentence   # "backdoor: 2x2 patch at top-left -> label 7 (confidence: ...)"

scikit-learn contract: the constructor's arguments are the configuration, ``fit`` returns ``self``,
learned state ends in ``_``. The encoder is any registered one (:func:`weightspace.encoders.encoders`):
a torch encoder (``np``, ``gmn``, ``probe``, ``flat_mlp``) is trained once with every head
(:func:`weightspace.interpret.heads.multihead`); any other (``stats``: statistics + scikit-learn) gets
one classifier per field, trained on the diffs that field applies to.

Views (``view``): ``diff`` (child - parent, the default; same names, shapes and neuron permutations as
the models, so every encoder and augmentation applies unchanged); ``pair`` (the diff and the parent's
weights stacked as channels: :mod:`np_diff <weightspace.interpret.pair>` reads them and their product,
i.e. the change relative to the weight it changed; ``flat_mlp`` and ``stats`` read both tensor sets);
or ``child`` (the child's weights alone, the parent unseen: a control that says how
much the parent contributes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.encoders import TorchEncoder, get_encoder, make_encoder
from weightspace.interpret.data import DiffSet
from weightspace.interpret.fields import DEFAULT_FIELDS, FIELDS, check_fields, field_values
from weightspace.interpret.heads import HeadLayout, multihead
from weightspace.interpret.render import Description, describe
from zoo.errors import ConfigError, CorruptFileError, MismatchError, NotFoundError, ZooError

__all__ = ["DiffInterpreter", "VIEWS", "load_interpreter"]

VIEWS = ("diff", "pair", "child")



class DiffInterpreter:
    """Predicts what a fine-tune changed (kind, classes, corruption, trigger, target) from its weights.

    Args:
        encoder: a registered encoder name (default ``np_diff``: NP layers over the diff, with the parent as
            channels in the ``pair`` view, and per-tensor statistics; see :mod:`weightspace.interpret.pair`).
        config: the encoder's options (``{"epochs": 60, "hidden": 64, "augment": ["permute"]}``); ``task`` is set.
        fields: the fields to predict (``kind`` always; see :data:`~weightspace.interpret.fields.FIELDS`).
        view: ``diff`` (child - parent) or ``child``.
        seed: seeds the encoder.
        relabel: add this many copies of the training diffs with the models' classes relabelled at random
            (:func:`~weightspace.interpret.data.relabel_classes`: the last layer's rows and the labels' classes
            permuted alike), an augmentation by the symmetry "which class is called what" (0: none).
        weights: per-field loss weights (``{"kind": 2.0}``; a field not named weighs 1) for torch encoders.
    """

    def __init__(self, encoder: str = "np_diff", config: Mapping[str, Any] | None = None,
                 fields: Sequence[str] = DEFAULT_FIELDS, view: str = "diff", seed: int = 0, relabel: int = 0,
                 weights: Mapping[str, float] | None = None) -> None:  # fmt: skip
        self.encoder = encoder
        self.config = dict(config or {})
        self.fields = list(fields)
        self.view = view
        self.seed = seed
        self.relabel = relabel
        self.weights = dict(weights or {})

    def get_params(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "config": dict(self.config), "fields": list(self.fields), "view": self.view,
                "seed": self.seed, "relabel": self.relabel, "weights": dict(self.weights)}  # fmt: skip

    def __repr__(self) -> str:
        return f"DiffInterpreter({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ------------------------------------------------------------------------------------ checks
    def _check(self) -> None:
        check_fields(self.fields)
        if self.view not in VIEWS:
            raise ConfigError(f"unknown interpreter view {self.view!r}; valid: {', '.join(VIEWS)}")
        if "task" in self.config:
            raise ConfigError("the interpreter sets the encoder's task itself; drop 'task' from its config")
        get_encoder(self.encoder_name())  # lists the valid names when unknown
        if isinstance(self.relabel, bool) or not isinstance(self.relabel, int) or self.relabel < 0:
            raise ConfigError(f"relabel must be a whole number of relabelled copies (0 or more), got {self.relabel!r}")
        if bad := {f: w for f, w in self.weights.items() if f not in self.fields or not isinstance(w, (int, float)) or w < 0}:
            raise ConfigError(f"loss weights must name fields of this interpreter ({', '.join(self.fields)}) with "
                              f"numbers >= 0; got {bad}")  # fmt: skip

    @property
    def fitted(self) -> bool:
        return hasattr(self, "vocab_")

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError("this interpreter is not fitted yet; call fit(diffs) first (or load a trained one)")

    def check_architecture(self, config: Mapping[str, Any] | None, what: str = "these models") -> None:
        """Refuse models of another architecture than the one the interpreter was trained on."""
        self._check_fitted()
        if self.arch_ is None or config is None:
            return
        from zoo.models.architectures import normalize_config

        if normalize_config(config) != self.arch_:
            raise MismatchError(
                f"the interpreter was trained on diffs of {_arch_text(self.arch_)}, but {what} are {_arch_text(config)}; "
                "train an interpreter on diffs of this architecture (weightzoo interpret train -p POPULATION)"
            )

    # ------------------------------------------------------------------------------------- views
    def _X(self, data: DiffSet | Mapping[str, Tensor], parent: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        if isinstance(data, DiffSet):
            diff, parent = data.diff, data.parent
        else:
            diff = dict(data)
        if self.view == "diff":
            return dict(diff)
        if parent is None:
            raise ConfigError(f"the {self.view!r} view needs the parents' weights as well as the diffs")
        if self.view == "pair":
            from weightspace.interpret.pair import PARENT

            return {**diff, **{PARENT + k: parent[k] for k in diff}}
        return {k: diff[k] + parent[k] for k in diff}

    def encoder_name(self) -> str:
        """The registered encoder (``np`` cannot read a pair's parent channels: in the pair view it is ``np_diff``)."""
        return "np_diff" if self.view == "pair" and self.encoder == "np" else self.encoder

    # --------------------------------------------------------------------------------------- fit
    def fit(self, data: DiffSet, *, progress: bool = False) -> DiffInterpreter:
        """Fit on labelled diffs (:func:`~weightspace.interpret.data.load_diffs`); returns ``self``."""
        self._check()
        if len(data) < 4:
            raise ConfigError(f"{len(data)} labelled diffs are too few to train an interpreter; build more "
                              "(weightzoo build digits-mlp-diffs)")  # fmt: skip
        from zoo.models.architectures import normalize_config

        self.fields = check_fields(self.fields)
        self.arch_ = normalize_config(data.config) if data.config else None
        if self.relabel:
            from weightspace.interpret.data import concat_diffs, relabel_classes

            g = torch.Generator().manual_seed(int(self.seed) + 7)
            k = int((self.arch_ or {}).get("out_features") or 0)
            if k < 2:
                raise ConfigError("relabel needs models with a class head (an architecture with out_features >= 2)")
            data = concat_diffs([data] + [relabel_classes(data, torch.randperm(k, generator=g)) for _ in range(self.relabel)])
        values = [field_values(c, self.fields) for c in data.changes]
        preset = _preset(self.arch_, self.fields)
        layout = HeadLayout.fit(values, self.fields, preset)
        X = self._X(data)
        spec = _spec(self.arch_)
        cls = get_encoder(self.encoder_name())
        torch.manual_seed(int(self.seed))
        if isinstance(cls, type) and issubclass(cls, TorchEncoder):
            config = dict(self.config)
            if (self.encoder_name() == "np_diff" and self.view in ("diff", "pair") and "outputs" not in config
                    and any(FIELDS[f].class_valued for f in self.fields)):
                config["outputs"] = "set"  # class-equivariant class heads: chosen on a validation split (docs/benchmarks.md)
            enc = multihead(cls)(**{"seed": self.seed, **config, "task": "classification"})
            enc.head_fields_, enc.head_preset_, enc.head_weights_ = self.fields, layout.vocab, dict(self.weights)
            enc.fit(X, values, spec=spec, arch=self.arch_, progress=progress)
            self.encoders_ = {"*": enc}
        else:
            self.encoders_ = {}
            for f in self.fields:
                rows = [i for i, v in enumerate(values) if f in v]
                xs, ys = [], []
                for i in rows:
                    for y in values[i][f] if FIELDS[f].multi else [values[i][f]]:
                        xs.append(i)
                        ys.append(y)
                if len(set(map(str, ys))) < 2:
                    continue  # one value only: nothing to learn (the field is then read as that value)
                t = torch.as_tensor(xs, dtype=torch.long)
                enc = make_encoder(self.encoder_name(), **{"seed": self.seed, **self.config, "task": "classification"})
                enc.fit({k: v[t] for k, v in X.items()}, np.asarray([str(y) for y in ys]), spec=spec, arch=self.arch_)
                self.encoders_[f] = enc
        self.vocab_ = layout.vocab
        self.image_hw_ = _image_hw(self.arch_, data)
        self.n_train_ = len(data)
        return self

    # ----------------------------------------------------------------------------------- predict
    def predict_proba(self, data: DiffSet | Mapping[str, Tensor], parent: Mapping[str, Tensor] | None = None) -> dict[str, np.ndarray]:
        """Per-field probabilities ``{field: [N, V_f]}`` over :attr:`vocab_` (a diff set, or stacked diffs
        ``name -> [N, *shape]`` with the parents' weights for the ``child`` view)."""
        self._check_fitted()
        if isinstance(data, DiffSet):
            self.check_architecture(data.config, f"the diffs of {data.population!r}")
        X = self._X(data, parent)
        try:
            if "*" in self.encoders_:
                return self.encoders_["*"].predict_heads(X)
            n = next(iter(X.values())).shape[0]
            out = {}
            for f in self.fields:
                vocab = self.vocab_[f]
                p = np.zeros((n, len(vocab)))
                enc = self.encoders_.get(f)
                if enc is None:  # one value seen in training
                    p[:, 0] = 1.0
                else:
                    q = np.asarray(enc.predict_proba(X))
                    index = {str(c): j for j, c in enumerate(vocab)}
                    for j, c in enumerate(enc.classes_):
                        p[:, index[str(c)]] = q[:, j]
                out[f] = p
            return out
        except MismatchError as e:
            raise MismatchError(f"these diffs do not fit the interpreter: {e}") from None

    def describe(self, data: DiffSet | Mapping[str, Tensor], parent: Mapping[str, Tensor] | None = None) -> list[Description]:
        """One :class:`~weightspace.interpret.render.Description` (fields, confidences, sentence) per diff."""
        return describe(self.predict_proba(data, parent), self.vocab_, image_hw=self.image_hw_)

    def score(self, data: DiffSet) -> dict[str, float]:
        """Held-out scores (see :func:`weightspace.interpret.metrics.score`)."""
        from weightspace.interpret.metrics import score

        return score(self, data)

    # ------------------------------------------------------------------------------ persistence
    def to_doc(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(JSON-able document, tensors)``: the configuration, learned state and the encoders' weights."""
        self._check_fitted()
        encs, tensors = {}, {}
        for f, enc in self.encoders_.items():
            if not isinstance(enc, TorchEncoder):
                raise ConfigError(f"an interpreter over encoder {self.encoder!r} cannot be saved (its scikit-learn "
                                  "models are pickles); use a torch encoder (np, gmn, probe, flat_mlp)")  # fmt: skip
            state, t = enc._fitted_state()
            encs[f] = {"params": enc.get_params(), "state": state}
            tensors.update({f"{f}/{k}": v for k, v in t.items()})
        doc = {"interpreter": "diff", "params": self.get_params(), "state": {
            "vocab_": self.vocab_, "arch_": self.arch_, "image_hw_": self.image_hw_, "n_train_": self.n_train_,
            "encoders_": encs}}  # fmt: skip
        return doc, tensors

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> DiffInterpreter:
        try:
            params, state = doc["params"], doc["state"]
            out = cls(**params)
            out.vocab_ = {f: list(v) for f, v in state["vocab_"].items()}
            out.arch_, out.n_train_ = state["arch_"], int(state["n_train_"])
            out.image_hw_ = list(state["image_hw_"]) if state.get("image_hw_") else None
            out.encoders_ = {}
            base = get_encoder(out.encoder_name())
            for f, e in state["encoders_"].items():
                enc = (multihead(base) if f == "*" else base)(**e["params"])
                own = {k[len(f) + 1:]: v for k, v in tensors.items() if k.startswith(f + "/")}
                enc._restore(e["state"], own)
                out.encoders_[f] = enc
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"not a saved diff interpreter ({type(e).__name__}: {e})") from None
        return out

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` into a new folder (through :mod:`zoo.io.outpath`'s guard)."""
        from safetensors.torch import save_file

        from zoo.io.outpath import staged_output_dir

        doc, tensors = self.to_doc()
        with staged_output_dir(path, overwrite=overwrite, what="interpreter folder") as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
            (tmp / "config.json").write_text(json.dumps(doc, indent=1))
        return Path(path).expanduser()


def load_interpreter(path: str | Path) -> DiffInterpreter:
    """Rebuild an interpreter saved with :meth:`DiffInterpreter.save`."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise NotFoundError(f"no saved interpreter in {p} (config.json missing); save one with interpreter.save(folder)")
    try:
        doc = json.loads((p / "config.json").read_text())
        tensors = load_file(str(p / "weights.safetensors"))
    except (ValueError, OSError) as e:
        raise CorruptFileError(f"{p} does not hold a readable interpreter ({e})") from None
    return DiffInterpreter.from_doc(doc, tensors)


# ------------------------------------------------------------------------------------------ helpers
def _arch_text(cfg: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(cfg.items())) + "}"


def _spec(arch: Mapping[str, Any] | None) -> Any:
    if arch is None:
        return None
    from weightspace.spec import spec_for

    return spec_for(arch)


def _preset(arch: Mapping[str, Any] | None, fields: Sequence[str]) -> dict[str, list[Any]]:
    """Vocabularies known before training: the change kinds, and every class of the models' head."""
    from zoo.build.finetune import CHANGE_KINDS

    preset: dict[str, list[Any]] = {"kind": list(CHANGE_KINDS)}
    k = (arch or {}).get("out_features")
    if isinstance(k, int):
        preset.update({f: list(range(k)) for f in ("classes", "target") if f in fields})
    return preset


def _image_hw(arch: Mapping[str, Any] | None, data: DiffSet) -> list[int] | None:
    if arch is None:
        return None
    from zoo.build.finetune import image_hw

    try:
        return list(image_hw({"name": data.info.get("dataset", "digits")}, arch))
    except (ZooError, ValueError, KeyError, TypeError):  # an architecture without an image input: no corner names
        return None

