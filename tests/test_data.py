"""Synthetic benchmark and dataset loaders: determinism, the planted prior, and errors that name file and line."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mbias.data import load_data
from mbias.errors import DataError
from mbias.synth import ANSWERS, load_synth


def test_synthetic_examples_are_deterministic_and_randomly_accessible():
    a, b = load_synth("synth:shapes-p90/train"), load_synth("shapes-p90/train")
    for i in (0, 17, 4321):
        x, y = a[i], b[i]
        assert (x.id, x.question, x.answer, x.category) == (y.id, y.question, y.answer, y.category)
        assert x.image.tobytes() == y.image.tobytes()
    assert a[3].id != a[4].id


@pytest.mark.parametrize("split,expected", [("train", 0.9), ("test-id", 0.9), ("test-balanced", 0.0)])
def test_the_planted_prior_has_the_named_strength(split, expected):
    ds = load_synth(f"shapes-p90/{split}")
    n = 400
    follows = Counter()
    sizes = Counter()
    for i in range(n):
        ex = ds[i]
        follows[ex.category] += ex.meta["follows_prior"]
        sizes[ex.category] += 1
    # P(answer == cue answer) = p + (1 - p) / K, per question type
    for cat, count in sizes.items():
        k = len(ANSWERS[cat])
        want = expected + (1 - expected) / k
        assert follows[cat] / count == pytest.approx(want, abs=0.16), cat


def test_counter_prior_split_never_follows_the_cue():
    ds = load_synth("shapes-p99/test-cp")
    assert not any(ds[i].meta["follows_prior"] for i in range(300))


def test_every_question_type_is_present_with_its_choices():
    ds = load_synth("shapes-p00/test-balanced")
    cats = {ds[i].category for i in range(200)}
    assert cats == set(ANSWERS)
    ex = ds[0]
    assert ex.answer in ex.choices and ex.choices == list(ANSWERS[ex.category])


def test_a_faint_object_is_drawn_between_its_colour_and_the_background():
    import numpy as np

    from mbias.synth.scenes import COLOURS, Obj, draw_scene

    def pixels(contrast):
        img = draw_scene([Obj("square", "blue", 0, 0, contrast=contrast)], 32, np.random.default_rng(3))
        return np.asarray(img, dtype=float)

    full, faint, vanished = pixels(1.0), pixels(0.1), pixels(0.0)
    centre = (8, 8)  # inside the square in the top-left cell
    assert tuple(full[centre]) == COLOURS["blue"]
    shade = vanished[centre]
    assert shade[0] == shade[1] == shade[2]  # contrast 0: the object takes the (grey) background shade
    gap_faint, gap_full = np.abs(faint[centre] - shade), np.abs(full[centre] - shade)
    assert 0 < gap_faint.max() < 0.2 * gap_full.max()


def test_unknown_synthetic_name_lists_the_valid_ones():
    with pytest.raises(DataError) as err:
        load_data("synth:shapes-p42/train")
    msg = str(err.value)
    assert "shapes-p90" in msg and "test-cp" in msg and "\n" not in msg


def test_export_round_trips_through_the_jsonl_loader(tmp_path, capsys):
    from mbias.cli import main

    assert main(["synth", "shapes-p50/test-cp", "--out", str(tmp_path / "out"), "--limit", "12"]) == 0
    loaded = load_data(str(tmp_path / "out" / "data.jsonl")).examples
    ds = load_synth("shapes-p50/test-cp")
    assert len(loaded) == 12
    for i, got in enumerate(loaded):
        want = ds[i]
        assert (got.id, got.question, got.answer, got.choices, got.category) == (
            want.id, want.question, want.answer, want.choices, want.category)
        assert got.load_image().tobytes() == want.image.tobytes()


def _write(tmp_path, lines, name="data.jsonl"):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("not an image")
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"id": "a", "image": "ok.png", "question": "What colour?", "answer": "red"}


@pytest.mark.parametrize("bad_line,message", [
    ('{"id": "b", "image": "ok.png", "question": "q"', "not valid JSON"),
    ({"id": "b", "image": "ok.png", "answer": "red"}, "missing 'question'"),
    ({"id": "b", "image": "ok.png", "question": "q"}, "missing 'answer'"),
    ({"id": "b", "image": "nope.png", "question": "q", "answer": "x"}, "does not exist"),
    ({"id": "b", "image": "bad.png", "question": "q", "answer": "x"}, "not a readable image"),
    ({"id": "b", "image": "ok.png", "question": "q", "answer": "x", "choices": ["y", "z"]}, "not one of the choices"),
    ({"id": "a", "image": "ok.png", "question": "q", "answer": "x"}, "duplicate id"),
])
def test_bad_records_name_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path, [GOOD, bad_line])
    with pytest.raises(DataError) as err:
        load_data(str(path))
    msg = str(err.value)
    assert f"{path} line 2" in msg and message in msg and "\n" not in msg
    skipped = load_data(str(path), on_error="skip")
    assert len(skipped.examples) == 1 and skipped.skipped == 1


def test_imagefolder_metadata_and_relative_paths(tmp_path):
    _write(tmp_path, [{"file_name": "ok.png", "question": "q?", "answer": "red", "category": "c"}],
           name="metadata.jsonl")
    ex = load_data(str(tmp_path)).examples[0]
    assert ex.load_image().size == (8, 8) and ex.category == "c" and ex.id == "metadata-1"


def test_saved_hf_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    img = Image.new("RGB", (8, 8), (0, 0, 255))
    ds = datasets.Dataset.from_dict({"image": [img, img], "question": ["q1", "q2"], "answer": ["blue", "b"],
                                     "id": ["x", "y"]}, features=datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string"),
        "id": datasets.Value("string")}))
    ds.save_to_disk(tmp_path / "hf")
    got = load_data(str(tmp_path / "hf")).examples
    assert [e.id for e in got] == ["x", "y"] and got[0].load_image().getpixel((0, 0)) == (0, 0, 255)
    datasets.DatasetDict({"test": ds}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match="splits test"):
        load_data(str(tmp_path / "dd"))
    assert len(load_data(str(tmp_path / "dd" / "test")).examples) == 2


def test_missing_dataset_path_is_explained(tmp_path):
    with pytest.raises(DataError, match="no dataset at"):
        load_data(str(tmp_path / "nothing.jsonl"))


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = _write(tmp_path, [GOOD])
    with path.open("ab") as fh:
        fh.write(b'{"id": "b", "image": "ok.png", "question": "caf\xe9?", "answer": "x"}\n')
    with pytest.raises(DataError) as err:
        load_data(str(path))
    msg = str(err.value)
    assert f"{path} line 2" in msg and "not valid UTF-8" in msg and "\n" not in msg
    assert len(load_data(str(path), on_error="skip").examples) == 1


def _hf(tmp_path, name, **columns):
    """A saved HF dataset folder with these columns (images given as colours become 8x8 PIL images)."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    if "img" in columns:
        columns["img"] = [Image.new("RGB", (8, 8), c) for c in columns["img"]]
    datasets.Dataset.from_dict(columns).save_to_disk(tmp_path / name)
    return str(tmp_path / name)


def test_column_mapping_with_a_choices_list_and_the_answer_as_an_index(tmp_path):
    # A-OKVQA's shape: choices list, correct_choice_idx, question_id
    ref = _hf(tmp_path, "aokvqa", img=[(255, 0, 0), (0, 0, 255)], question=["What colour?", "Which colour?"],
              choices=[["red", "blue"], ["red", "blue"]], correct_choice_idx=[0, 1], question_id=[101, 102])
    got = load_data(ref, columns={"image": "img", "answer": "correct_choice_idx", "id": "question_id"}).examples
    assert [(e.id, e.answer, e.choices) for e in got] == [("101", "red", ["red", "blue"]),
                                                          ("102", "blue", ["red", "blue"])]
    assert got[1].load_image().getpixel((0, 0)) == (0, 0, 255)


def test_options_inside_the_question_with_a_letter_answer_become_letter_choices(tmp_path):
    # MMStar's shape: the options are part of the question and the answer is a letter
    question = "Which shape is shown?\nOptions: A: a circle, B: a square, C: a triangle"
    ref = _hf(tmp_path, "mmstar", image=[(0, 0, 0)], question=[question], answer=["B"], index=[7])
    ex = load_data(ref, columns={"id": "index"}).examples[0]
    assert (ex.id, ex.question, ex.choices, ex.answer) == ("7", question, ["A", "B", "C"], "B")


@pytest.mark.parametrize("question,letters", [
    ("Which animal?\nA. cat\nB. dog\nC. owl", ["A", "B", "C"]),
    ("Which animal? (A) cat (B) dog", ["A", "B"]),
    ("Is vitamin A. good? A) yes B) no", ["A", "B"]),  # a stray "A." before the options is skipped
    ("Which city is in the U.S.?", []),
    ("No options at all", []),
])
def test_option_letters_in_common_layouts(question, letters):
    from mbias.records import option_letters

    assert option_letters(question) == letters


def test_a_letter_answer_indexes_a_choices_list_and_open_answers_stay_open():
    from mbias.records import resolve_choices

    assert resolve_choices({"answer": "B", "choices": ["cat", "dog"]})["answer"] == "dog"
    assert resolve_choices({"answer": "B", "choices": ["A", "B"]})["answer"] == "B"  # the letter is a choice
    open_ended = {"question": "Who wrote A. Smith's memoir?", "answer": "A"}
    assert resolve_choices(open_ended) == open_ended  # one marker is not a list of options


def test_grouping_questions_by_image_with_a_mapped_image_key(tmp_path):
    # VQAv2's shape: several questions per image, the answer under another name
    ref = _hf(tmp_path, "vqa", image=[(0, 0, 0)] * 3, question=["q1", "q2", "q3"], image_id=[5, 5, 9],
              multiple_choice_answer=["yes", "2", "red"])
    got = load_data(ref, columns={"answer": "multiple_choice_answer", "image_key": "image_id"}).examples
    assert [e.answer for e in got] == ["yes", "2", "red"] and [e.image_key for e in got] == ["5", "5", "9"]
    assert got[0].choices is None


def test_a_missing_column_lists_the_columns_there_are(tmp_path):
    ref = _hf(tmp_path, "other", image=[(0, 0, 0)], text=["q"], label=["a"])
    with pytest.raises(DataError) as err:
        load_data(ref)
    msg = str(err.value)
    assert "no column(s) question, answer" in msg and "text, label" in msg and "--columns" in msg
    assert len(load_data(ref, columns={"question": "text", "answer": "label"}).examples) == 1


def test_column_mapping_in_jsonl_names_the_users_column(tmp_path):
    path = _write(tmp_path, [{"id": "a", "image": "ok.png", "q": "What colour?", "answer": "red"},
                             {"id": "b", "image": "ok.png", "question": "ignored", "answer": "red"}])
    with pytest.raises(DataError, match=r"line 2: missing 'q' \(the question column\)"):
        load_data(str(path), columns={"question": "q"})
    assert load_data(str(path), columns={"question": "q"}, on_error="skip").examples[0].question == "What colour?"


@pytest.mark.parametrize("text,message", [
    ("answer", "expected FIELD=COLUMN"),
    ("answer=", "expected FIELD=COLUMN"),
    ("anser=label", "unknown field 'anser'"),
])
def test_bad_column_mappings_are_config_errors(text, message):
    from mbias.errors import ConfigError
    from mbias.records import parse_columns

    assert parse_columns("answer=label, question=text") == {"answer": "label", "question": "text"}
    with pytest.raises(ConfigError, match=message):
        parse_columns(text)


def test_synthetic_data_refuses_a_column_mapping():
    with pytest.raises(DataError, match="drop the column mapping"):
        load_data("synth:shapes-p90/test-cp", columns={"answer": "label"})


def test_hub_reference_reads_the_named_config_and_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    calls = []

    def fake_load_dataset(repo, *config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "question": ["q"],
                                           "choices": [["x", "y"]], "answer": [1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = load_data("hf:lmms-lab/ScienceQA:ScienceQA-IMG:test[:5]").examples[0]
    assert calls == [("lmms-lab/ScienceQA", ("ScienceQA-IMG",), "test[:5]")] and ex.answer == "y"
    load_data("hf:lmms-lab/POPE:test")
    assert calls[-1] == ("lmms-lab/POPE", (), "test")


@pytest.mark.parametrize("ref", ["hf:lmms-lab/POPE", "hf:a:b:c:d", "hf:lmms-lab/POPE:"])
def test_malformed_hub_reference_shows_the_syntax(ref):
    with pytest.raises(DataError, match="hf:REPO:SPLIT or hf:REPO:CONFIG:SPLIT"):
        load_data(ref)


def test_hub_dataset_offline_is_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'lmms-lab/POPE' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_data("hf:lmms-lab/POPE:test")
    msg = str(err.value)
    assert "\n" not in msg and "could not load hf:lmms-lab/POPE:test" in msg and "OfflineModeIsEnabled" in msg


def test_hub_dataset_without_the_datasets_package_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # any import of it now raises ImportError
    with pytest.raises(DataError, match=r"pip install 'mbias\[datasets\]'"):
        load_data("hf:lmms-lab/POPE:test")
