"""The few-shot split: seeded, disjoint by construction, and no generator image is ever evaluated."""
import pandas as pd
import pytest

from benchmark.split import LeakageError, Split, few_shot_split, n_few_shot


def table(n_per_defect=(10, 7, 1), n_good=5, n_train=8):
    rows = []
    for i in range(n_train):
        rows.append(("train", 0, "good", f"/d/train/good/{i:03d}.png"))
    for i in range(n_good):
        rows.append(("test", 0, "good", f"/d/test/good/{i:03d}.png"))
    for k, n in enumerate(n_per_defect):
        for i in range(n):
            rows.append(("test", 1, f"defect{k}", f"/d/test/defect{k}/{i:03d}.png"))
    df = pd.DataFrame(rows, columns=["split", "label", "defect_type", "image_path"])
    df["image_id"] = df["image_path"]
    return df


@pytest.mark.parametrize("mode", ["random", "ordered"])
def test_split_is_disjoint_and_complete(mode):
    df = table()
    s = few_shot_split(df, 0.5, mode, seed=3)
    few, ev = set(s.few_shot["image_path"]), set(s.evaluation["image_path"])
    assert not few & ev
    test = set(df.loc[df.split == "test", "image_path"])
    assert few | ev == test
    assert set(s.evaluation.loc[s.evaluation.label == 0, "image_path"]) == set(
        df.loc[(df.split == "test") & (df.label == 0), "image_path"])  # every test normal is evaluated
    counts = s.few_shot.groupby("defect_type").size().to_dict()
    assert counts == {"defect0": 5, "defect1": 3}  # a lone defect0-image type stays in evaluation


def test_ordered_takes_first_files_by_number():
    s = few_shot_split(table((9,)), 1 / 3, "ordered")
    assert sorted(s.few_shot["image_path"]) == [f"/d/test/defect0/{i:03d}.png" for i in range(3)]


def test_random_split_is_seeded():
    a = few_shot_split(table(), 0.5, "random", seed=1).few_shot["image_path"].tolist()
    b = few_shot_split(table(), 0.5, "random", seed=1).few_shot["image_path"].tolist()
    c = [few_shot_split(table(), 0.5, "random", seed=s).few_shot["image_path"].tolist() for s in range(2, 6)]
    assert a == b
    assert any(x != a for x in c)


def test_row_order_does_not_change_the_split():
    df = table()
    shuffled = df.sample(frac=1.0, random_state=0)
    a = few_shot_split(df, 0.5, "random", 7).few_shot["image_path"]
    b = few_shot_split(shuffled, 0.5, "random", 7).few_shot["image_path"]
    assert sorted(a) == sorted(b)


def test_leak_is_detected():
    df = table()
    s = few_shot_split(df, 0.5)
    leaky = Split(s.train_normals, s.few_shot, pd.concat([s.evaluation, s.few_shot.head(1)]))
    with pytest.raises(LeakageError):
        leaky.check()


@pytest.mark.parametrize("n,frac,k", [(0, 0.5, 0), (1, 0.5, 0), (2, 0.5, 1), (10, 0.5, 5), (3, 0.9, 2),
                                      (9, 1 / 3, 3), (2, 0.01, 1)])
def test_n_few_shot(n, frac, k):
    assert n_few_shot(n, frac) == k


def test_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        few_shot_split(table(), 0.5, "sideways")
