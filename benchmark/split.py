"""Few-shot split of test anomalies: part goes to the generators, the rest is evaluated.

Disjoint by construction (each anomalous test row lands in exactly one part) and asserted so:
no image a generator learned from is ever evaluated.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd


class LeakageError(AssertionError):
    """An image is both in the generator's few-shot set and in the evaluation set."""


@dataclass(frozen=True)
class Split:
    train_normals: pd.DataFrame   # normal training images (detector + generator)
    few_shot: pd.DataFrame        # test anomalies handed to the generator
    evaluation: pd.DataFrame      # all test normals + the remaining test anomalies

    def check(self) -> None:
        gen = set(self.few_shot["image_path"]) | set(self.train_normals["image_path"])
        leaked = gen & set(self.evaluation["image_path"])
        if leaked:
            raise LeakageError(f"{len(leaked)} generator image(s) in the evaluation set, e.g. {sorted(leaked)[0]}")


def stable_seed(*parts) -> int:
    """A seed from strings/ints that does not depend on Python's hash randomisation."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little")


def _file_number(path: str) -> tuple:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    nums = re.findall(r"\d+", stem)
    return (int(nums[-1]) if nums else -1, stem)


def n_few_shot(n: int, fraction: float) -> int:
    """How many of n anomalies go to the generator: floor(n*fraction), leaving >= 1 to evaluate
    and giving >= 1 to the generator whenever there are two or more."""
    if n <= 1:
        return 0
    return int(min(max(np.floor(n * fraction + 1e-9), 1), n - 1))


def few_shot_split(samples: pd.DataFrame, fraction: float = 0.5, mode: str = "random",
                   seed: int = 0) -> Split:
    train = samples[samples["split"] == "train"]
    test = samples[samples["split"] == "test"]
    anomalies = test[test["label"] == 1]
    picked: list[int] = []
    for defect, group in anomalies.groupby("defect_type", sort=True):
        k = n_few_shot(len(group), fraction)
        if mode == "ordered":
            order = sorted(group.index, key=lambda i: _file_number(group.at[i, "image_path"]))
            picked.extend(order[:k])
        elif mode == "random":
            idx = sorted(group.index, key=lambda i: group.at[i, "image_id"])
            rng = np.random.default_rng(stable_seed(seed, defect))
            picked.extend(np.asarray(idx)[rng.permutation(len(idx))[:k]].tolist())
        else:
            raise ValueError(f"split mode must be 'random' or 'ordered', got {mode!r}")
    few = test.loc[sorted(picked)]
    evaluation = test.drop(index=few.index)
    split = Split(train.reset_index(drop=True), few.reset_index(drop=True), evaluation.reset_index(drop=True))
    split.check()
    return split
