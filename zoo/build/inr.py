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
from typing import TYPE_CHECKING

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
    if "hp_image" not in df or df.loc[ids, "hp_image"].isna().any():
        missing = ids if "hp_image" not in df else [i for i in ids if df.loc[i, "hp_image"] != df.loc[i, "hp_image"]]
        raise ConfigError(
            f"model(s) {missing[:5]} have no 'image' hyperparameter, so the image they draw is unknown; INRs built "
            "by an INR recipe (task: inr) record it, SIRENs added by hand do not"
        )
    names = df.loc[ids, "hp_dataset"].tolist() if "hp_dataset" in df else [None]
    datasets = {"digits" if v is None or v != v else str(v) for v in names}  # v != v: NaN, not recorded
    if len(datasets) > 1:
        raise ConfigError(f"these INRs draw images of several data sets ({sorted(datasets)}); give one data set's INRs")
    ds = load_dataset(datasets.pop(), root=dataset_root)
    col = f"hp_{INR_SPLIT_HPARAM}"
    by_split: dict[str, INRData] = {}
    targets: list[torch.Tensor] = []
    labels: list[int] = []
    indices: list[int] = []
    for i in ids:
        raw = df.loc[i, col] if col in df else None
        split = "train" if raw is None or raw != raw else str(raw)
        if split not in by_split:
            by_split[split] = inr_targets(ds, split=split)  # every image of the split, in split order
        data = by_split[split]
        k = int(df.loc[i, "hp_image"])
        if not 0 <= k < len(data.indices):
            raise ConfigError(f"model {i} draws image {k} of split {split!r}, which has {len(data.indices)} images")
        targets.append(data.targets[k])
        labels.append(int(data.labels[k]))
        indices.append(k)
    first = next(iter(by_split.values()))
    return INRData(coords=first.coords, targets=torch.stack(targets), labels=torch.tensor(labels),
                   indices=torch.tensor(indices), image_shape=first.image_shape)  # fmt: skip
