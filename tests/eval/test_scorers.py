"""Every scorer against hand-computed values on small files in each benchmark's official format."""

from __future__ import annotations

import csv
import itertools
import json
import random
import subprocess
import sys

import pytest

from vlsa.eval import flatten_metrics, scorers
from vlsa.eval.score import main, score
from vlsa.eval.scorers._choice import extract_choice
from vlsa.eval.scorers._common import ScoreError, read_jsonl
from vlsa.eval.scorers._vqa_text import evalai_normalize, soft_accuracy, vqa_normalize
from vlsa.eval.scorers.mme import mme_label
from vlsa.eval.scorers.pope import pope_says_yes

approx = pytest.approx


def answer(question_id, text, **extra) -> dict:
    """One record of a LLaVA answer file."""
    row = {"question_id": question_id, "prompt": "", "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}
    return {**row, **extra}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_json(path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


# ---------------------------------------------------------------- VQA normalisation and soft accuracy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period dropped
        ("none", "0"),
        ("1,000", "1000"),  # digit-comma-digit: every mark deleted
        ("1,000 - 2", "1000 2"),
        ("3.5", "3.5"),  # a point between digits stays
        ("yes.", "yes"),
        ("a.m.", "am"),
        ("The cat", "cat"),  # articles dropped
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions restored
        ("isnt", "isn't"),
        ("whats", "what's"),
        ("t-shirt", "t shirt"),  # a mark touching no space becomes a space
        ("3 - 4", "3 4"),  # a mark touching a space is deleted
        ("hello,world", "hello world"),
        ("it's $5", "it's $5"),  # apostrophes and "$" are not in the official list
        ("Yes\tsir\n", "yes sir"),
    ],
)
def test_vqa_normalize_edge_cases(raw, expected):
    assert vqa_normalize(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("What's THAT?", "what 's that"),  # lowercased, "?" dropped, "'s" split off
        ("The poster shows a 10% discount.", "poster shows 10% discount"),
        ("1,000", "1000"),
        ("Two.", "2"),
    ],
)
def test_evalai_normalize(raw, expected):
    assert evalai_normalize(raw) == expected


def test_vqa_normalize_drops_at_most_32_periods():
    # The reference passes re.UNICODE (32) as re.sub's count.
    assert vqa_normalize("." * 40) == "." * 8


@pytest.mark.parametrize("agreeing, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_hand_values(agreeing, expected):
    humans = ["cat"] * agreeing + ["dog"] * (10 - agreeing)
    assert soft_accuracy("cat", humans) == approx(expected)


def test_soft_accuracy_is_the_mean_over_the_ten_nine_answer_subsets():
    rng = random.Random(0)
    for _ in range(20):
        humans = [rng.choice(["a", "b", "c"]) for _ in range(10)]
        subsets = list(itertools.combinations(humans, 9))
        expected = sum(min(1.0, subset.count("a") / 3) for subset in subsets) / len(subsets)
        assert soft_accuracy("a", humans) == approx(expected)


# ---------------------------------------------------------------- VQAv2, TextVQA, VizWiz


def _vqav2_annotations() -> dict:
    def item(question_id, answer_type, answers):
        return {
            "question_id": question_id,
            "image_id": 7,
            "question_type": "what",
            "answer_type": answer_type,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    return {
        "annotations": [
            item(1, "number", ["2"] * 3 + ["3"] * 7),
            item(2, "yes/no", ["yes"] * 2 + ["no"] * 8),
            item(3, "other", ["red"] * 10),
            item(4, "other", ["t-shirt"] * 5 + ["tshirt"] * 5),
            item(5, "other", ["t-shirt"] * 10),
        ]
    }


VQAV2_ANSWERS = [answer(1, "Two."), answer(2, "Yes"), answer(3, "Red."), answer(4, "T-shirt"), answer("5", "t-shirt")]


def test_vqav2_soft_accuracy(tmp_path):
    gt = write_json(tmp_path / "annotations.json", _vqav2_annotations())
    metrics = score("vqav2", write_jsonl(tmp_path / "answers.jsonl", VQAV2_ANSWERS), gt)
    # q1 "2" by 3 of 10 -> 0.9; q2 "yes" by 2 -> 0.6; q3 -> 1; q4: the disagreeing humans are cleaned
    # ("t shirt" x5) -> 1; q5: humans all agree so they stay "t-shirt", unlike the answer -> 0.
    assert metrics["accuracy"] == approx(3.5 / 5)
    assert metrics["per_answer_type"] == approx({"number": 0.9, "yes/no": 0.6, "other": 2 / 3})
    assert metrics["n"] == 5


def test_vqav2_missing_unknown_and_repeated_ids(tmp_path):
    gt = _vqav2_annotations()
    with pytest.raises(ScoreError, match=r"1 of 5 ground-truth questions have no answer \(first: '5'\)"):
        score("vqav2", VQAV2_ANSWERS[:4], gt)
    partial = score("vqav2", VQAV2_ANSWERS[:4], gt, partial=True)
    assert partial["accuracy"] == approx(3.5 / 4) and partial["n"] == 4
    with pytest.raises(ScoreError, match=r"not in the ground truth \(first: 99\)"):
        score("vqav2", [*VQAV2_ANSWERS, answer(99, "x")], gt)
    with pytest.raises(ScoreError, match="question '1' is answered twice"):
        score("vqav2", [*VQAV2_ANSWERS, answer("1", "2")], gt)


def test_textvqa_by_question_id_and_by_llava_image_id(tmp_path):
    brand = {"question_id": 10, "image_id": "img1", "question": "What brand?"}
    year = {"question_id": 11, "image_id": "img1", "question": "What year is shown?"}
    brand["answers"] = ["Nike"] * 3 + ["Adidas"] * 7
    year["answers"] = ["1,999"] * 2 + ["2000"] * 8
    gt = {"data": [brand, year]}
    llava_prompt = "What year is shown?\nReference OCR token: 1999\nAnswer the question using a single word or phrase."
    answers = [answer(10, "nike"), answer("img1", "1,999", prompt=llava_prompt)]
    metrics = score("textvqa", answers, write_json(tmp_path / "TextVQA_0.5.1_val.json", gt))
    assert metrics == {"accuracy": approx((0.9 + 0.6) / 2), "n": 2}


def test_vizwiz_keys_and_raw_human_answers(tmp_path):
    def item(image, answer_type, answers):
        return {"image": image, "question": "q", "answer_type": answer_type, "answerable": 1,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}  # fmt: skip

    gt = [
        item("VizWiz_val_0.jpg", "unanswerable", ["unanswerable"] * 4 + ["white"] * 6),
        item("VizWiz_val_1.jpg", "number", ["2"] + ["3"] * 9),
        item("VizWiz_val_2.jpg", "number", ["Two"] * 10),  # VizWiz compares human answers as given
    ]
    answers = [answer(0, "Unanswerable"), answer("VizWiz_val_1.jpg", "two"), answer("2", "two")]
    metrics = score("vizwiz", answers, write_json(tmp_path / "val.json", gt))
    assert metrics["accuracy"] == approx((1.0 + 0.3 + 0.0) / 3)
    assert metrics["per_answer_type"] == approx({"number": 0.15, "unanswerable": 1.0})


# ---------------------------------------------------------------- GQA and POPE


def test_gqa_exact_match_over_balanced_questions(tmp_path):
    gt = {
        "q1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
        "q2": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
        "q3": {"answer": "red", "isBalanced": False, "types": {"structural": "query", "semantic": "attr"}},
        "q4": {"answer": "table", "isBalanced": True, "types": {"structural": "query", "semantic": "obj"}},
    }
    answers = [answer("q1", "Yes."), answer("q2", "right"), answer("q3", "red"), answer("q4", "The table")]
    metrics = score("gqa", answers, write_json(tmp_path / "testdev_balanced_questions.json", gt))
    assert metrics["accuracy"] == approx(1 / 3) and metrics["n"] == 3  # q3 is not balanced
    assert metrics["binary"] == 1.0 and metrics["open"] == 0.0
    assert metrics["per_semantic_type"] == {"attr": 1.0, "obj": 0.0, "rel": 0.0}


@pytest.mark.parametrize(
    "text, says_yes",
    [
        ("Yes, there is a dog in the image.", True),
        ("No, there is no dog.", False),
        ("There is not a cat.", False),
        ("The dog is there. No cat though.", True),  # only the first sentence counts
        ("Not sure.", True),  # "Not" is not one of the no-words, as in the reference
        ("no", False),
    ],
)
def test_pope_yes_no_parsing(text, says_yes):
    assert pope_says_yes(text) is says_yes


def test_pope_metrics_overall_and_per_category(tmp_path):
    labels = [("1", "yes", "random"), ("2", "yes", "random"), ("3", "no", "random"),
              ("4", "no", "adversarial"), ("5", "yes", "adversarial")]  # fmt: skip
    gt = write_jsonl(tmp_path / "pope.jsonl", [{"question_id": q, "label": l, "category": c} for q, l, c in labels])
    answers = [answer(1, "Yes"), answer(2, "No"), answer(3, "No"), answer(4, "Yes"), answer(5, "Yes, it is.")]
    metrics = score("pope", answers, gt)
    # TP 1,5; FN 2; TN 3; FP 4.
    assert (metrics["tp"], metrics["fn"], metrics["tn"], metrics["fp"]) == (2, 1, 1, 1)
    assert metrics["accuracy"] == approx(0.6) and metrics["yes_ratio"] == approx(0.6)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == approx((2 / 3, 2 / 3, 2 / 3))
    random_split, adversarial = metrics["per_category"]["random"], metrics["per_category"]["adversarial"]
    assert (random_split["precision"], random_split["recall"], random_split["f1"]) == approx((1.0, 0.5, 2 / 3))
    assert (adversarial["accuracy"], adversarial["precision"], adversarial["recall"]) == approx((0.5, 0.5, 1.0))
    assert metrics["mean_f1"] == approx(2 / 3) and metrics["mean_accuracy"] == approx((2 / 3 + 0.5) / 2)


# ---------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("b.", "B"),
        ("(C)", "C"),
        ("The answer is (B).", "B"),
        ("The answer is B.", "B"),
        ("the answer is a.", "A"),
        ("Because of A, the answer is C.", "C"),
        ("B. A cat", "B"),
        ("(B) a cat", "B"),
        ("Answer: D", "D"),
        ("The answer is A. No wait, the answer is B.", None),  # two different letters
        ("I think the answer is Apple.", None),
        ("E", None),  # not one of the four options
        ("a dog", None),  # option text is only used when the options are given
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, 4) == expected


def test_extract_choice_by_option_text():
    options = ["a cat", "a dog", "a bird", "fish"]
    assert extract_choice("A dog", 4, options) == "B"
    assert extract_choice("a", 4, options) == "A"  # a bare letter wins over the text rule
    assert extract_choice("bird.", 4, options) == "C"


def _scienceqa(tmp_path) -> str:
    problems = {
        "1": {"choices": ["x", "y", "z"], "answer": 1, "image": "image.png", "split": "test"},
        "2": {"choices": ["x", "y"], "answer": 0, "image": None, "split": "test"},
        "3": {"choices": ["a", "b", "c", "d"], "answer": 3, "image": "image.png", "split": "test"},
        "4": {"choices": ["x", "y"], "answer": 0, "image": None, "split": "train"},
    }
    write_json(tmp_path / "sqa" / "pid_splits.json", {"test": ["1", "2", "3"], "train": ["4"]})
    return write_json(tmp_path / "sqa" / "problems.json", problems)


SQA_ANSWERS = [answer("1", "The answer is (B)."), answer("2", "C"), answer("3", "D. because")]


def test_scienceqa_and_scienceqa_img(tmp_path):
    problems = _scienceqa(tmp_path)
    # 1 right; 2 says "C" with two choices -> wrong; 3 right.
    metrics = score("scienceqa", SQA_ANSWERS, problems)
    assert metrics == {"accuracy": approx(2 / 3), "img_accuracy": 1.0, "n": 3, "n_img": 2}
    assert score("scienceqa_img", SQA_ANSWERS, problems) == {"accuracy": 1.0, "n": 2}
    assert score("scienceqa", [answer(4, "A")], str(tmp_path / "sqa"), split="train")["accuracy"] == 1.0
    with pytest.raises(ScoreError, match="no split 'val'"):
        score("scienceqa", SQA_ANSWERS, problems, split="val")


def _write_tsv(path, header, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def test_mmbench_circular_rounds_and_categories(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    gt = _write_tsv(tmp_path / "mmbench_dev.tsv", header, [
        [0, 'Which "animal"?\tPick one', "nan", "cat", "dog", "bird", "", "B", "attr", "perception", "aGk="],
        [1, "Which colour?", "", "red", "blue", "nan", "nan", "A", "color", "perception", "aGk="],
        [2, "Which?", "", "w", "x", "y", "z", "D", "attr", "reasoning", "aGk="],
    ])  # fmt: skip
    rounds = [
        answer(0, "B", round_id=0, options=["cat", "dog", "bird"], option_char=["A", "B", "C"]),
        answer(0, "A", round_id=1, options=["dog", "bird", "cat"], option_char=["B", "C", "A"]),  # "dog": right
        answer(0, "The answer is (A).", round_id=2, options=["bird", "cat", "dog"], option_char=["C", "A", "B"]),
    ]
    metrics = score("mmbench", [*rounds, answer(1, "red"), answer(2, "D")], gt)
    # index 0 fails its third round, so only 1 and 2 count; 4 of 5 single answers are right.
    assert metrics["accuracy"] == approx(2 / 3) and metrics["answer_accuracy"] == approx(0.8)
    assert (metrics["n"], metrics["n_answers"]) == (3, 5)
    assert metrics["per_category"] == {"attr": 0.5, "color": 1.0}
    assert metrics["per_l2_category"] == {"perception": 0.5, "reasoning": 1.0}


def test_mmbench_circular_rows_of_the_toolkit_tsv(tmp_path):
    header = ["index", "question", "A", "B", "answer", "category"]
    rows = [[5, "q", "yes", "no", "A", "c"], [1000005, "q", "no", "yes", "B", "c"]]  # one question, two rounds
    gt = _write_tsv(tmp_path / "circular.tsv", header, rows)
    metrics = score("mmbench", [answer(5, "A"), answer(1000005, "A")], gt)
    assert (metrics["accuracy"], metrics["answer_accuracy"], metrics["n"]) == (0.0, 0.5, 1)
    no_answers = _write_tsv(tmp_path / "test.tsv", ["index", "question", "A", "B"], [[5, "q", "x", "y"]])
    with pytest.raises(ScoreError, match="'answer' column"):
        score("mmbench", [answer(5, "A")], no_answers)


def test_seed_per_type_and_data_type(tmp_path):
    choices = {"choice_a": "w", "choice_b": "x", "choice_c": "y", "choice_d": "z"}
    gt = {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
        "questions": [
            {"question_id": "101", "answer": "A", "question_type_id": 1, "data_type": "image", **choices},
            {"question_id": "102", "answer": "C", "question_type_id": 2, "data_type": "image", **choices},
            {"question_id": "v1", "answer": "B", "question_type_id": 2, "data_type": "video", **choices},
        ],
    }
    answers = [answer(101, "A"), answer("102", "B"), answer("v1", "(B)")]
    metrics = score("seed", answers, write_json(tmp_path / "SEED-Bench.json", gt))
    assert metrics["accuracy"] == approx(2 / 3)
    assert (metrics["accuracy_image"], metrics["accuracy_video"]) == (0.5, 1.0)
    assert metrics["per_question_type"] == {"Instance Identity": 0.5, "Scene Understanding": 1.0}


def test_ai2d_question_folder(tmp_path):
    parts = ["ears", "nose", "mouth", "face"]
    write_json(tmp_path / "questions" / "0.png.json", {"imageName": "0.png", "questions": {
        "What is A?": {"abcLabel": True, "answerTexts": parts, "correctAnswer": 3, "questionId": "0.png-0"},
        "What is B?": {"abcLabel": True, "answerTexts": parts, "correctAnswer": 0, "questionId": "0.png-1"},
    }})  # fmt: skip
    one_file = write_json(tmp_path / "questions" / "1.png.json", {"imageName": "1.png", "questions": {
        "Which?": {"abcLabel": False, "answerTexts": ["a", "b", "c"], "correctAnswer": 1, "questionId": "1.png-0"},
    }})  # fmt: skip
    answers = [answer("0.png-0", "D"), answer("0.png-1", "The answer is (A)."), answer("1.png-0", "C")]
    assert score("ai2d", answers, str(tmp_path / "questions")) == {"accuracy": approx(2 / 3), "n": 3}
    assert score("ai2d", answers[2:], one_file) == {"accuracy": 0.0, "n": 1}


# ---------------------------------------------------------------- MME


@pytest.mark.parametrize(
    "text, label", [("Yes", "yes"), ("No.", "no"), ("Not really", "no"), ("eyes", "yes"), ("Maybe", "other")]
)
def test_mme_answer_reading(text, label):
    assert mme_label(text) == label


MME_QUESTIONS = {
    ("existence", "1.jpg"): [("Is there a dog in this image?", "Yes"), ("Is there a cat in this image?", "No")],
    ("existence", "2.jpg"): [("Is there a car in this image?", "Yes"), ("Is there a bus in this image?", "No")],
    ("code_reasoning", "10.png"): [("Is the output 3?", "No"), ("Is the output 5?", "Yes")],
}


def _mme_release_folder(root) -> str:
    """existence/ holds images and question files side by side; code_reasoning/ has the two subfolders."""
    for (subtask, image), pairs in MME_QUESTIONS.items():
        flat = subtask == "existence"
        questions = root / subtask if flat else root / subtask / "questions_answers_YN"
        images = root / subtask if flat else root / subtask / "images"
        for folder in (questions, images):
            folder.mkdir(parents=True, exist_ok=True)
        (images / image).write_bytes(b"not read")
        stem = image.rsplit(".", 1)[0]
        (questions / f"{stem}.txt").write_text("".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs))
    return str(root)


def _mme_tool_folder(root) -> str:
    root.mkdir()
    lines: dict[str, str] = {}
    for (subtask, image), pairs in MME_QUESTIONS.items():
        rows = "".join(f"{image}\t{q}  Please answer yes or no.\t{a}\n" for q, a in pairs)
        lines[subtask] = lines.get(subtask, "") + rows
    for subtask, text in lines.items():
        (root / f"{subtask}.txt").write_text(text)
    return str(root)


LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
MME_ANSWERS = [
    answer("existence/1.jpg", "Yes", prompt="Is there a dog in this image?" + LLAVA_SUFFIX),
    answer("existence/1.jpg", "No, there is no cat.", prompt="Is there a cat in this image?"),
    answer("existence/2.jpg", "Yes", prompt="Is there a car in this image? Please answer yes or no."),
    answer("existence/2.jpg", "yes", prompt="Is there a bus in this image?"),
    answer("code_reasoning/10.png", "No", prompt="<image>\nIs the output 3?"),
    answer("code_reasoning/10.png", "Maybe", prompt="Is the output 5?"),
]


@pytest.mark.parametrize("layout", [_mme_release_folder, _mme_tool_folder])
def test_mme_acc_acc_plus_and_totals(tmp_path, layout):
    metrics = score("mme", MME_ANSWERS, layout(tmp_path / "mme"))
    # existence: 3 of 4 right, image 1 fully right of 2 -> 75 + 50 points; code: 1 of 2, no image fully right.
    assert metrics["subtasks"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0, "n": 4}
    assert metrics["subtasks"]["code_reasoning"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0, "n": 2}
    assert (metrics["perception"], metrics["cognition"], metrics["n"]) == (125.0, 50.0, 6)


# ---------------------------------------------------------------- demo split, API, CLI and registry


def _demo(tmp_path):
    gt = write_jsonl(tmp_path / "heldout.jsonl", [
        {"question_id": "d1", "answer": "Red", "question_type": "color"},
        {"question_id": "d2", "answer": "circle", "question_type": "shape"},
        {"question_id": "d3", "answer": "3", "question_type": "count"},
        {"question_id": "d4", "answer": "upper left", "question_type": "position"},
    ])  # fmt: skip
    texts = {"d1": "red.", "d2": "A circle", "d3": "4", "d4": "Upper-left"}
    preds = write_jsonl(tmp_path / "answers.jsonl", [answer(q, t) for q, t in texts.items()])
    return preds, gt


def test_demo_exact_match_per_type(tmp_path):
    metrics = score("demo", *_demo(tmp_path))
    assert metrics == {
        "accuracy": 0.75,
        "per_type": {"color": 1.0, "count": 0.0, "position": 1.0, "shape": 1.0},
        "n": 4,
    }


def test_cli_prints_one_json_object(tmp_path):
    preds, gt = _demo(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "vlsa.eval.score", "--benchmark", "demo", "--pred", preds, "--gt", gt],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout)["accuracy"] == 0.75
    assert done.stderr == ""


def test_cli_errors_are_clear(tmp_path, capsys):
    preds, gt = _demo(tmp_path)
    short = write_jsonl(tmp_path / "short.jsonl", read_jsonl(preds)[:3])
    assert main(["--benchmark", "demo", "--pred", short, "--gt", gt]) == 2
    assert "1 of 4 ground-truth questions have no answer (first: 'd4'); pass --partial" in capsys.readouterr().err
    assert main(["--benchmark", "demo", "--pred", short, "--gt", gt, "--partial"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": "d1", "text": "red"}\n{"question_id": \n')
    assert main(["--benchmark", "demo", "--pred", str(broken), "--gt", gt]) == 2
    assert "broken.jsonl: line 2 is not valid JSON" in capsys.readouterr().err
    no_text = write_jsonl(tmp_path / "no_text.jsonl", [{"question_id": "d1", "answer": "red"}])
    assert main(["--benchmark", "demo", "--pred", no_text, "--gt", gt]) == 2
    assert "record 1 (question_id 'd1') needs a string 'text'" in capsys.readouterr().err
    assert main(["--benchmark", "nope", "--pred", preds, "--gt", gt]) == 2
    assert "unknown benchmark 'nope'; known: ai2d, demo" in capsys.readouterr().err
    assert main(["--benchmark", "demo", "--pred", preds, "--gt", str(tmp_path / "absent.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["--benchmark", "demo", "--pred", preds, "--gt", gt, "--split", "val"]) == 2
    assert "unknown option(s) ['split']" in capsys.readouterr().err


def test_ground_truth_of_the_wrong_shape_is_a_format_error(tmp_path):
    with pytest.raises(ScoreError, match="annotations JSON"):
        score("vqav2", [answer(1, "x")], {"data": []})
    with pytest.raises(ScoreError, match="not in the expected format .*KeyError: 'image'"):
        score("vizwiz", [answer(0, "x")], [{"question": "q", "answers": []}])


def test_registry_lists_every_benchmark_and_takes_a_new_one(tmp_path):
    expected = {"ai2d", "demo", "gqa", "mmbench", "mme", "pope", "scienceqa", "scienceqa_img", "seed", "textvqa",
                "vizwiz", "vqav2"}  # fmt: skip
    assert expected <= set(scorers.names())

    @scorers.register("unit_length", read=read_jsonl, gt_format="JSONL {question_id, length}")
    def score_length(answers, gt, *, partial=False, scale=1.0):
        lengths = {str(row["question_id"]): row["length"] for row in gt}
        right = sum(len(a["text"]) == lengths[str(a["question_id"])] for a in answers)
        return {"accuracy": scale * right / len(answers)}

    try:
        gt = write_jsonl(tmp_path / "gt.jsonl", [{"question_id": 1, "length": 3}, {"question_id": 2, "length": 1}])
        assert score("unit_length", [answer(1, "abc"), answer(2, "xy")], gt, scale=2.0) == {"accuracy": 1.0}
        assert scorers.get("unit_length").options == ("scale",)
        with pytest.raises(ValueError, match="already registered"):
            scorers.register("unit_length", read=read_jsonl, gt_format="")(score_length)
    finally:
        scorers.unregister("unit_length")


def test_flatten_metrics_for_mlflow():
    nested = {"accuracy": 0.5, "n": 4, "per_type": {"color": 1.0}, "subtasks": {"ocr": {"acc": 0.25}}, "note": "x"}
    assert flatten_metrics(nested) == {"accuracy": 0.5, "n": 4.0, "per_type/color": 1.0, "subtasks/ocr/acc": 0.25}


def test_demo_groups_by_the_llava_category_field(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": "q1", "text": "Red."}, {"question_id": "q2", "text": "two"}])
    gt = write_jsonl(tmp_path / "g.jsonl", [{"question_id": "q1", "answer": "red", "category": "color"},
                                            {"question_id": "q2", "answer": "3", "category": "count"}])
    assert score("demo", preds, gt)["per_type"] == {"color": 1.0, "count": 0.0}
