"""Which image a stored implicit neural representation draws: the one home of an INR's data.

The builder fits one SIREN per image and records, as hyperparameters, ``image`` (the image's index in
its split), ``label`` (its class), ``dataset`` and ``inr_split`` (the split, ``train`` unless the
recipe's ``inr.split`` says otherwise; models built before it was recorded count as ``train``). Every
consumer that needs a stored INR's target (re-evaluation by :func:`zoo.build.evaluate.evaluate_models`,
the Hessian of :mod:`analysis.landscape`, the generators' evaluation) reads it here::

    data = stored_inr_data(zoo, zoo.population("digits-inr").ids())
    data.coords     # [P, 2] the pixel grid, each coordinate in [-1, 1]
    data.targets    # [N, P, C] each model's own image, in [-1, 1] (the SIREN convention)
    data.labels     # [N] each image's class

A SIREN added by hand (no ``image`` hyperparameter) has no known target: :class:`ConfigError` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from zoo.errors import ConfigError
from zoo.models.datasets import INRData, inr_targets, load_dataset

if TYPE_CHECKING:
    from zoo.facade import Zoo

__all__ = ["stored_inr_data", "INR_SPLIT_HPARAM"]

#: The hyperparameter that records which split an INR's image comes from.
INR_SPLIT_HPARAM = "inr_split"


def stored_inr_data(zoo: Zoo, ids: Sequence[int], *, dataset_root: str | None = None) -> INRData:
    """The coordinate grid and each stored INR's own target image, in the order of ``ids``.

    Shapes: ``coords [P, 2]``, ``targets [N, P, C]``, ``labels [N]``, ``indices [N]`` (image indices in
    their split). Raises :class:`ConfigError` for a model without the ``image`` hyperparameter, and when
    the models draw images of different data sets or image shapes (one grid per call).
    """
    ids = [int(i) for i in ids]
    if not ids:
        raise ConfigError("no models given: stored_inr_data needs at least one INR")
    df = zoo.models().ids_in(ids).df().set_index("id")  # one query for every model's hyperparameters

    def column(name: str) -> list[Any]:  # a hyperparameter per model in the order of ids; None where not recorded
        return [None if name not in df or pd.isna(v := df.at[i, name]) else v for i in ids]

    images = column("hp_image")
    missing = [i for i, k in zip(ids, images, strict=True) if k is None]
    if missing:
        raise ConfigError(
            f"model(s) {missing[:5]} have no 'image' hyperparameter, so the image they draw is unknown; INRs built "
            "by an INR recipe (task: inr) record it, SIRENs added by hand do not"
        )
    datasets = {"digits" if v is None else str(v) for v in column("hp_dataset")}
    if len(datasets) > 1:
        raise ConfigError(f"these INRs draw images of several data sets ({sorted(datasets)}); give one data set's INRs")
    ds = load_dataset(datasets.pop(), root=dataset_root)
    by_split: dict[str, INRData] = {}
    targets: list[torch.Tensor] = []
    labels: list[int] = []
    indices: list[int] = []
    for i, image, raw in zip(ids, images, column(f"hp_{INR_SPLIT_HPARAM}"), strict=True):
        split = "train" if raw is None else str(raw)
        if split not in by_split:
            by_split[split] = inr_targets(ds, split=split)  # every image of the split, in split order
        data = by_split[split]
        k = int(image)
        if not 0 <= k < len(data.indices):
            raise ConfigError(f"model {i} draws image {k} of split {split!r}, which has {len(data.indices)} images")
        targets.append(data.targets[k])
        labels.append(int(data.labels[k]))
        indices.append(k)
    first = next(iter(by_split.values()))
    return INRData(coords=first.coords, targets=torch.stack(targets), labels=torch.tensor(labels),
                   indices=torch.tensor(indices), image_shape=first.image_shape)  # fmt: skip
