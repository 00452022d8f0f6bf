"""Labels from a table (data/table.py through open_source): the same images a folder gives, and each bad input a
one-line error naming the table and line, or a file skipped and listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import oculi
from oculi.data.sources import open_source
from oculi.data.table import TableColumns, read_label_table
from oculi.errors import OculiError
from tests.conftest import make_class_folder


def table_of(folder: Path, target: Path, delimiter: str = ",", prefix: str = "", extra: list | None = None) -> Path:
    """A table listing every image of a class folder, path relative to ``folder`` (shuffled, so the reader's
    order is its own), plus ``extra`` rows."""
    rows = sorted((p.relative_to(folder).as_posix(), p.parent.name) for p in folder.rglob("*.png"))
    rows = rows[1::2] + rows[::2]
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["path", "label"])
        writer.writerows([(prefix + p, label) for p, label in rows] + (extra or []))
    return target


def write_table(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_a_table_of_a_folder_gives_the_folders_classes_records_and_split(tmp_path):
    folder = make_class_folder(tmp_path / "colours")
    table = table_of(folder, tmp_path / "colours.csv")
    from_folder = open_source(str(folder), seed=3)
    from_table = open_source(str(table), seed=3, images=str(folder))
    assert from_table.classes == from_folder.classes
    assert [(r.path, r.label, r.split) for r in from_table.records] == \
           [(r.path, r.label, r.split) for r in from_folder.records]
    assert from_table.name == "colours" and from_table.root == folder.resolve()


def test_a_tsv_and_a_folder_holding_labels_csv_are_read_relative_to_their_folder(tmp_path):
    folder = make_class_folder(tmp_path / "shots", per_class=4)
    table_of(folder, folder / "labels.csv")
    tsv = table_of(folder, folder / "more.tsv", delimiter="\t")
    assert len(open_source(str(folder), 0, 0).records) == 12
    source = open_source(str(tsv), 0, 0)
    assert len(source.records) == 12 and source.name == "more"
    assert source.read(source.records[0]).shape[0] == 3  # the paths find the files


def test_a_split_column_places_rows_and_empty_cells_are_split_as_usual(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=10, classes=("a", "b"))
    rows = [f"{c}/img_{i:02d}.png,{c},{'test' if i < 3 else ''}" for c in "ab" for i in range(10)]
    table = write_table(tmp_path / "t.csv", "path,label,split\n" + "\n".join(rows) + "\n")
    source = open_source(str(table), val_split=0.2, test_split=0.5, images=str(folder))
    tests = {r.path for r in source.records if r.split == "test"}
    assert tests == {f"{c}/img_{i:02d}.png" for c in "ab" for i in range(3)}  # --test-split 0.5 not applied
    assert sum(r.split == "val" for r in source.records) == 2  # round(20% of 7) = 1 of each class


def test_other_column_names_are_read_with_the_column_settings(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=3, classes=("a", "b"))
    table = write_table(tmp_path / "t.csv", "file,species\n" + "".join(f"{c}/img_0{i}.png,{c}\n"
                                                                       for c in "ab" for i in range(3)))
    with pytest.raises(OculiError, match=r"t\.csv: no 'path' column \(found: file, species\); name the columns"):
        read_label_table(table, folder)
    read = read_label_table(table, folder, TableColumns(path="file", label="species"))
    assert read.classes == ["a", "b"] and len(read.records) == 6


@pytest.mark.parametrize("body, message", [
    ("a/img_00.png,\n", r"line 2 \(a/img_00\.png\) has an empty label"),
    ("a/img_00.png,a,holdout\n", r"line 2 \(a/img_00\.png\) has the split 'holdout'; use train, val, test"),
    ("../outside.png,a\n", r"line 2: \.\./outside\.png leaves the images folder"),
    ("a/img_00.png,a\na/img_00.png,b\n", r"a/img_00\.png is listed twice with two labels, 'a' and 'b' \(line 3"),
    ("", r"no rows below the header"),
])
def test_each_bad_row_is_a_one_line_error_naming_the_table_and_line(tmp_path, body, message):
    folder = make_class_folder(tmp_path / "c", per_class=2, classes=("a", "b"))
    table = write_table(tmp_path / "t.csv", "path,label,split\n" + body)
    with pytest.raises(OculiError, match=message) as err:
        read_label_table(table, folder)
    assert "\n" not in str(err.value) and "t.csv" in str(err.value)


def test_a_table_that_is_not_utf8_is_refused_by_name(tmp_path):
    table = write_table(tmp_path / "t.csv", "path,label\ncafé/1.png,crème\n", encoding="latin-1")
    with pytest.raises(OculiError, match=r"t\.csv: not UTF-8 text \(byte \d+\); save the table as UTF-8"):
        read_label_table(table, tmp_path)


def test_missing_files_and_non_images_are_skipped_and_listed_and_repeats_read_once(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=3, classes=("a", "b"))
    (folder / "notes.txt").write_text("x")
    table = table_of(folder, tmp_path / "t.csv", extra=[("a/gone.png", "a"), ("notes.txt", "a"),
                                                        ("a/img_00.png", "a")])
    source = open_source(str(table), 0, 0, images=str(folder))
    assert len(source.records) == 6
    assert dict(source.skipped) == {"a/gone.png": "listed in the table, but no such file",
                                    "notes.txt": "not an image file (.txt)"}
    assert any("1 rows repeat an earlier row" in w for w in source.warnings)


def test_absolute_paths_inside_the_images_folder_become_relative_and_others_stay_absolute(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=2, classes=("a", "b"))
    elsewhere = make_class_folder(tmp_path / "elsewhere", per_class=1, classes=("b",))
    inside, outside = (folder / "a" / "img_00.png").resolve(), (elsewhere / "b" / "img_00.png").resolve()
    table = write_table(tmp_path / "t.csv", f"path,label\n{inside},a\n{outside},b\na/img_01.png,a\n")
    source = open_source(str(table), 0, 0, images=str(folder))
    paths = {r.path for r in source.records}
    assert paths == {"a/img_00.png", "a/img_01.png", outside.as_posix()}
    assert all(source.read(r).shape[0] == 3 for r in source.records)


def test_images_is_refused_for_data_that_is_not_a_table(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=2)
    with pytest.raises(OculiError, match=r"^--images .*: only a table of labels \(\.csv, \.tsv\) names its images"):
        open_source(str(folder), images=str(folder))
    with pytest.raises(OculiError, match=r"--images .*nowhere: no such folder"):
        open_source(str(table_of(folder, tmp_path / "t.csv")), images=str(tmp_path / "nowhere"))


def test_training_from_a_table_gives_the_folders_split_metrics_and_weights(tmp_path):
    folder = make_class_folder(tmp_path / "colours", per_class=16)
    table = table_of(folder, tmp_path / "colours.csv")
    settings = dict(model="mlp", epochs=2, seed=1, report=False, progress=False)
    runs = [oculi.train(str(folder), out=str(tmp_path / "from-folder"), **settings),
            oculi.train(str(table), images=str(folder), out=str(tmp_path / "from-table"), **settings)]
    split, metrics, weights = [[(r.run_dir / name).read_text() if name != "model.safetensors" else
                                load_file(r.run_dir / name) for r in runs]
                               for name in ("split.csv", "test_metrics.json", "model.safetensors")]
    assert split[0] == split[1]
    drop = lambda m: {k: v for k, v in json.loads(m).items() if k != "leak_free"}
    assert drop(metrics[0])["accuracy"] == drop(metrics[1])["accuracy"]
    assert drop(metrics[0])["confusion_matrix"] == drop(metrics[1])["confusion_matrix"]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_a_data_frame_trains_as_its_csv_does_and_resume_finds_its_rows(tmp_path):
    pandas = pytest.importorskip("pandas")
    folder = make_class_folder(tmp_path / "colours", per_class=8)
    table = table_of(folder, tmp_path / "colours.csv")
    frame = pandas.read_csv(table)
    settings = dict(model="mlp", epochs=1, seed=2, report=False, progress=False)
    from_csv = oculi.train(str(table), images=str(folder), out=str(tmp_path / "csv"), **settings)
    from_frame = oculi.train(frame, images=str(folder), out=str(tmp_path / "frame"), **settings)
    assert (from_frame.run_dir / "split.csv").read_text() == (from_csv.run_dir / "split.csv").read_text()
    saved = Path(json.loads((from_frame.run_dir / "config.json").read_text())["config"]["data"])
    assert saved.is_file() and pandas.read_csv(saved).equals(frame)  # what --resume and the report read


def test_a_run_from_a_table_is_evaluated_again_from_it_and_from_a_table_given_to_evaluate(tmp_path):
    from oculi.evaluate import evaluate_folder, evaluate_run

    folder = make_class_folder(tmp_path / "colours", per_class=12)
    table = table_of(folder, tmp_path / "listed.csv")
    run = oculi.train(str(table), images=str(folder), model="mlp", epochs=1, out=str(tmp_path / "run"),
                      report=False, progress=False)
    model = oculi.load(run.run_dir)
    again, _ = evaluate_run(model, run.run_dir)
    assert again["accuracy"] == run.test_metrics["accuracy"] and again["n"] == run.test_metrics["n"]
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(table.read_text().replace("path,label", "file,kind", 1))
    whole, written = evaluate_folder(model, renamed, run_dir=run.run_dir,
                                     table={"images": str(folder), "path_column": "file", "label_column": "kind"})
    assert whole["n"] == 36 and written.name == "evaluate-renamed"


def test_a_missing_table_is_named_as_a_table_and_a_tables_split_is_not_called_a_folders(tmp_path):
    from oculi.training.plan_line import _train_folder_split_for_test

    with pytest.raises(OculiError, match=r"^no such table: .*gone\.csv \(built-in datasets"):
        open_source(str(tmp_path / "gone.csv"))
    folder = make_class_folder(tmp_path / "data" / "train", per_class=10, classes=("a", "b"))
    as_folder = open_source(str(folder.parent))
    assert _train_folder_split_for_test(as_folder) == "train"  # "no test/ folder: 10% of train/ held out"
    table = table_of(folder.parent, tmp_path / "t.csv")
    assert _train_folder_split_for_test(open_source(str(table), images=str(folder.parent))) is None


# ---------------------------------------------------------------- label sets (multi-label)

def test_a_label_cell_with_the_separator_makes_label_sets_stratified_by_the_rarest_label(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=4, classes=("a", "b", "c"))
    rows = "".join(f"{n}/img_{i:02d}.png,{n};c\n" if n != "c" else f"c/img_{i:02d}.png,c\n"
                   for n in ("a", "b", "c") for i in range(4))
    read = read_label_table(write_table(tmp_path / "t.csv", "path,label\n" + rows), folder)
    assert read.multi_label and read.classes == ["a", "b", "c"]
    by_path = {r.path: r for r in read.records}
    assert by_path["a/img_00.png"].labels == (0, 2) and by_path["a/img_00.png"].label == 0  # a: rarer than c
    assert by_path["c/img_01.png"].labels == (2,)


def test_another_separator_and_one_label_rows_stay_single_label(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=2, classes=("a", "b"))
    single = read_label_table(table_of(folder, tmp_path / "t.csv"), folder)
    assert not single.multi_label and all(r.labels is None for r in single.records)
    text = "path,label\na/img_00.png,a|b\nb/img_00.png,b\n"
    read = read_label_table(write_table(tmp_path / "p.csv", text), folder, TableColumns(label_sep="|"))
    assert read.multi_label and {r.path: r.labels for r in read.records}["a/img_00.png"] == (0, 1)


def test_zero_one_columns_give_label_sets_in_the_columns_order(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=2, classes=("a", "b"))
    text = "path,dog,cat\na/img_00.png,1,1\na/img_01.png,0,1\nb/img_00.png,1,0\n"
    read = read_label_table(write_table(tmp_path / "t.csv", text), folder, TableColumns(label_columns=("dog", "cat")))
    assert read.classes == ["dog", "cat"] and read.multi_label
    assert {r.path: r.labels for r in read.records} == {"a/img_00.png": (0, 1), "a/img_01.png": (1,),
                                                          "b/img_00.png": (0,)}


@pytest.mark.parametrize("text, columns, message", [
    ("path,dog,cat\na/img_00.png,1,2\n", ("dog", "cat"), r"line 2 \(a/img_00\.png\) has '2' in the column 'cat'"),
    ("path,dog,cat\na/img_00.png,0,0\n", ("dog", "cat"), r"line 2 \(a/img_00\.png\) has no label"),
    ("path,dog\na/img_00.png,1\n", ("dog", "cat"), r"no 'cat' column .*--label-columns"),
    ("path,label\na/img_00.png,a;\n", (), r"line 2 \(a/img_00\.png\) has an empty label \(labels separated by ';'\)"),
])
def test_bad_label_sets_are_one_line_errors(tmp_path, text, columns, message):
    folder = make_class_folder(tmp_path / "c", per_class=1, classes=("a", "b"))
    with pytest.raises(OculiError, match=message) as err:
        read_label_table(write_table(tmp_path / "t.csv", text), folder, TableColumns(label_columns=columns))
    assert "\n" not in str(err.value)


def test_multi_label_joins_the_rows_of_one_path_and_without_it_they_are_an_error(tmp_path):
    folder = make_class_folder(tmp_path / "c", per_class=2, classes=("a", "b"))
    table = write_table(tmp_path / "t.csv", "path,label\na/img_00.png,a\na/img_00.png,b\nb/img_00.png,b\n")
    with pytest.raises(OculiError, match=r"listed twice with two labels, 'a' and 'b'.*--multi-label"):
        read_label_table(table, folder)
    read = read_label_table(table, folder, TableColumns(multi_label=True))
    assert {r.path: r.labels for r in read.records} == {"a/img_00.png": (0, 1), "b/img_00.png": (1,)}
    assert "labels joined" in read.warnings[0]


def test_a_multi_label_split_manifest_reads_back_its_label_sets(tmp_path):
    from oculi.data.split import write_manifest
    folder = make_class_folder(tmp_path / "c", per_class=6, classes=("a", "b"))
    rows = "".join(f"a/img_{i:02d}.png,{'a;b' if i % 2 else 'a'}\nb/img_{i:02d}.png,b\n" for i in range(6))
    table = write_table(tmp_path / "t.csv", "path,label\n" + rows)
    source = open_source(str(table), images=str(folder), val_split=0.2, test_split=0.2)
    write_manifest(tmp_path / "split.csv", source.records, source.classes)
    again = open_source(str(table), images=str(folder), split_manifest=str(tmp_path / "split.csv"))
    assert [(r.path, r.labels, r.split) for r in again.records] == [(r.path, r.labels, r.split) for r in source.records]
    assert source.class_counts()["train"]["b"] + source.class_counts().get("val", {}).get("b", 0) \
        + source.class_counts().get("test", {}).get("b", 0) == 9  # six b images and three a;b
