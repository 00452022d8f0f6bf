"""The data profile's warnings: each one given when its problem is there, and not otherwise."""

from oculi.check.balance import profile, warnings_for
from oculi.check.hashing import FileFacts
from oculi.data.split import Record


def dataset(counts, gray=(), tiny=(), wide=(), test_per_class=12):
    """Records and facts: ``counts[c]`` training images of class c and ``test_per_class`` test images;
    the paths in ``gray``, ``tiny`` and ``wide`` are grayscale, 20 px and 3:1."""
    records = [Record(f"train/{c}/{i}.jpg", c, "train") for c, n in enumerate(counts) for i in range(n)]
    records += [Record(f"test/{c}/{i}.jpg", c, "test") for c in range(len(counts)) for i in range(test_per_class)]
    facts = {r.path: FileFacts(r.path, 1 if r.path in gray else 3, 20 if r.path in tiny else 200,
                               600 if r.path in wide else 20 if r.path in tiny else 200) for r in records}
    return records, facts


def kinds(records, facts, classes=("a", "b", "c"), skipped=()):
    prof = profile(list(classes), records, facts)
    return {w.kind: w.message for w in warnings_for(list(classes), records, facts, prof, [], list(skipped))}


def test_a_clean_balanced_set_gives_no_warning():
    assert kinds(*dataset([50, 50, 45])) == {}


def test_each_problem_gives_its_warning():
    gray = {f"train/2/{i}.jpg" for i in range(30)} | {"train/0/1.jpg"}
    records, facts = dataset([90, 60, 30], gray=gray, tiny={"train/0/3.jpg"}, wide={"train/1/4.jpg"},
                             test_per_class=4)
    found = kinds(records, facts, skipped=[("train/a/bad.jpg", "truncated or corrupt image data")])
    assert set(found) == {"imbalance", "few_test", "aspect", "tiny", "colour", "skipped"}
    assert "3:1" in found["imbalance"] and "'a' has 90" in found["imbalance"]
    assert "88% of 'c' are grayscale" in found["colour"]  # 30 of its 34: gathered in one class, a shortcut
    assert "train/0/3.jpg" in found["tiny"] and "train/1/4.jpg" in found["aspect"]
    assert "train/a/bad.jpg" in found["skipped"]


def test_gray_spread_over_classes_is_a_milder_warning():
    gray = {f"train/{c}/{i}.jpg" for c in range(3) for i in range(5)}
    found = kinds(*dataset([50, 50, 50], gray=gray))
    assert set(found) == {"colour"} and "the model may learn the colour" not in found["colour"]
