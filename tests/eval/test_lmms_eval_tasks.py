"""The real lmms-eval evaluator on local tasks: a tiny exported model, a POPE-format generation task and a
multiple-choice task, each a small parquet file with images written here and loaded through
``--include_path``. Assertions are on the results and samples files, not the exit code.

Needs lmms-eval (skipped without it): ``make test-lmms-eval`` builds its virtualenv and runs these.
Nothing is downloaded: the datasets library and the hub client are told to stay offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None, reason="lmms-eval is not installed "
                       "(make test-lmms-eval)"),
    pytest.mark.integration,
]

ROOT = Path(__file__).resolve().parents[2]
POPE_TASK, CHOICE_TASK = "vlsa_pope_local", "vlsa_choice_local"
POST_PROMPT = "\nAnswer the question using a single word or phrase."  # lmms-eval's POPE prompt
SHAPES = ("circle", "square", "triangle")

POPE_YAML = f"""task: {POPE_TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: generate_until
doc_to_visual: !function pope_local.pope_doc_to_visual
doc_to_text: !function pope_local.pope_doc_to_text
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_new_tokens: 1
  temperature: 0
  do_sample: false
process_results: !function pope_local.pope_process_results
metric_list:
""" + "".join(
    f"  - metric: pope_{m}\n    aggregation: !function pope_local.pope_aggregate_{m}\n    higher_is_better: true\n"
    for m in ("accuracy", "precision", "recall", "f1_score", "yes_ratio")
) + f"""lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: {json.dumps(POST_PROMPT)}
"""

CHOICE_YAML = f"""task: {CHOICE_TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: multiple_choice
doc_to_visual: !function pope_local.pope_doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: ["Yes", "No"]
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
# (acc_mutual_info is left out: lmms-eval 0.7.3's own request building fails on the unconditional
# ("", choice) requests it adds; the adapter's answer to them is checked on lmms-eval Instances below.)

# lmms-eval's own POPE functions, so the local task scores exactly as its `pope` task does
UTILS = "from lmms_eval.tasks.pope.utils import *  # noqa: F401,F403\n"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def yes_no_export(exported_model, pope_files, tmp_path_factory) -> str:
    """The tiny model with an LM head that can only say "Yes" or "No": row u for "Yes", -u for "No", 0 for
    every other token, so a one-token answer is a clean POPE answer. u is taken orthogonal to the mean of
    the last hidden states of the POPE prompts, so that the answer tips both ways across the documents."""
    import torch
    from PIL import Image

    from vlsa.eval.lmms_eval_adapter import VLSAEvalModel
    from vlsa.model.export import export_inference_model

    core = VLSAEvalModel(exported_model, device="cpu")
    model, tok = core.answerer.model, core.answerer.tokenizer
    hidden = torch.stack([_last_hidden(core, r["question"] + POST_PROMPT, Image.open(r["image"]).convert("RGB"))
                          for r in pope_files["rows"]])  # (N, D)
    mean = hidden.mean(0)
    (yes,), (no,) = (tok(w, add_special_tokens=False).input_ids for w in ("Yes", "No"))
    with torch.no_grad():
        head = model.language_model.get_output_embeddings().weight  # (V, D)
        u = hidden[0] - mean
        u = u - (u @ mean) / (mean @ mean) * mean
        head.zero_()
        head[yes], head[no] = u, -u
    return str(export_inference_model(model, str(tmp_path_factory.mktemp("export") / "yes-no-vlsa")))


def _last_hidden(core, question: str, image):
    """The LLM's last hidden state at the end of the prompt (what the head turns into the first answer token)."""
    import torch

    from vlsa.eval.infer import pack_images

    a = core.answerer
    ids = torch.tensor([a.tokenizer(a.prompt(core._turns(question, [image])), add_special_tokens=False).input_ids])
    with torch.no_grad():
        spliced, _ = a.model.prepare_inputs(ids, torch.ones_like(ids), torch.tensor([1]),
                                            **pack_images([a.model.encoder()(image)], [image]))
        out = a.model.language_model.base_model(inputs_embeds=spliced.inputs_embeds,
                                                attention_mask=spliced.attention_mask)
    return out.last_hidden_state[0, -1]


@pytest.fixture(scope="module")
def pope_files(demo, tmp_path_factory) -> dict:
    """A POPE-format benchmark on the demo's held-out images, written both ways: a parquet file of
    lmms-eval's POPE columns (images inside) and the LLaVA question file + POPE label file."""
    import datasets

    out = tmp_path_factory.mktemp("pope")
    images = sorted(Path(demo.image_root, "eval").iterdir())
    rows = []
    for i, path in enumerate(images):
        for j, shape in enumerate(SHAPES):
            rows.append({"question_id": f"{i}-{j}", "question": f"Is there a {shape} in the image?",
                         "answer": "yes" if (i + j) % 2 else "no", "category": "random",
                         "image_source": path.name, "image": str(path), "gold": (i + j + 1) % 2})
    features = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "category": datasets.Value("string"),
                                  "image_source": datasets.Value("string"), "image": datasets.Image(),
                                  "gold": datasets.Value("int64")})
    parquet = out / "pope.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    tasks = out / "tasks"
    tasks.mkdir()
    (tasks / "pope_local.py").write_text(UTILS)
    (tasks / f"{POPE_TASK}.yaml").write_text(POPE_YAML.replace("{data}", str(parquet)))
    (tasks / f"{CHOICE_TASK}.yaml").write_text(CHOICE_YAML.replace("{data}", str(parquet)))
    questions = out / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": r["question_id"], "image": f"eval/{r['image_source']}",
                                             "text": r["question"] + POST_PROMPT}) + "\n" for r in rows))
    labels = out / "labels.jsonl"
    labels.write_text("".join(json.dumps({"question_id": r["question_id"], "label": r["answer"],
                                          "category": r["category"]}) + "\n" for r in rows))
    return {"rows": rows, "tasks": str(tasks), "questions": str(questions), "labels": str(labels),
            "image_root": demo.image_root}


def lmms_eval(args: list[str], tmp: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m vlsa.eval.lmms_eval_run ARGS`` (under ``launcher`` when given), offline."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), TOKENIZERS_PARALLELISM="false")
    command = [*(launcher or [sys.executable]), "-m", "vlsa.eval.lmms_eval_run", *args]
    return subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=1500)


def read_results(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(the results JSON, task -> logged samples) of one run under ``out``."""
    results = sorted(out.glob("**/*_results.json"))
    assert len(results) == 1, f"results files: {results}"
    samples = {}
    for path in out.glob("**/*_samples_*.jsonl"):
        task = path.stem.split("_samples_", 1)[1]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(results[0].read_text()), samples


@pytest.fixture(scope="module")
def single_run(yes_no_export, pope_files, tmp_path_factory) -> dict:
    """One process, both tasks, batch size 2 from the CLI and the device from --model_args."""
    tmp = tmp_path_factory.mktemp("lmms-run")
    done = lmms_eval(["--model", "vlsa", "--model_args", f"pretrained={yes_no_export},device=cpu",
                      "--tasks", f"{POPE_TASK},{CHOICE_TASK}", "--include_path", pope_files["tasks"],
                      "--batch_size", "2", "--log_samples", "--output_path", str(tmp / "out")], tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results, samples = read_results(tmp / "out")
    return {"results": results, "samples": samples, "log": done.stdout + done.stderr}


# ------------------------------------------------------------------------------------------ tests


def test_generation_task_reports_pope_metrics(single_run, pope_files):
    from vlsa.eval import score

    metrics = single_run["results"]["results"][POPE_TASK]
    rows = pope_files["rows"]
    assert single_run["results"]["n-samples"][POPE_TASK]["effective"] == len(rows)
    samples = single_run["samples"][POPE_TASK]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(rows)))  # every document once
    answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
               for s in samples]
    assert set(answers) == {"Yes", "No"}  # one token of the yes/no head, each answer seen
    # lmms-eval's POPE metrics equal the built-in scorer's on the same answers (clean yes/no answers)
    built_in = score.score("pope", [{"question_id": rows[s["doc_id"]]["question_id"], "text": a}
                                    for s, a in zip(samples, answers)], pope_files["labels"])
    for ours, theirs in (("accuracy", "pope_accuracy"), ("precision", "pope_precision"), ("recall", "pope_recall"),
                         ("f1", "pope_f1_score")):
        assert metrics[f"{theirs},none"] == pytest.approx(built_in[ours])


def test_multiple_choice_task_ranks_the_choices_by_their_likelihood(single_run, yes_no_export, pope_files):
    """Each document's answers are the model's log-likelihoods of " Yes" and " No" in lmms-eval's form
    (mean negative log-likelihood per token), and acc / acc_norm follow from them."""
    from PIL import Image

    from vlsa.eval.lmms_eval_adapter import VLSAEvalModel, lmms_loglikelihood

    core = VLSAEvalModel(yes_no_export, device="cpu")
    rows = pope_files["rows"]
    samples = sorted(single_run["samples"][CHOICE_TASK], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(len(rows)))
    acc, acc_norm = [], []
    for s in samples:
        row = rows[s["doc_id"]]
        image = Image.open(row["image"]).convert("RGB")
        expected = [lmms_loglikelihood(*score) for score in
                    core.loglikelihoods([(row["question"], f" {c}", [image]) for c in ("Yes", "No")])]
        got = [(float(r[0]), r[1] in (True, "True")) for r in s["filtered_resps"]]  # the log writes strings
        assert [g[1] for g in got] == [e[1] for e in expected]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], rel=1e-4, abs=1e-5)
        nll = [e[0] for e in expected]
        acc.append(float(min(range(2), key=lambda k: nll[k]) == row["gold"]))
        acc_norm.append(float(min(range(2), key=lambda k: nll[k] / len((" Yes", " No")[k])) == row["gold"]))
    metrics = single_run["results"]["results"][CHOICE_TASK]
    assert metrics["acc,none"] == pytest.approx(sum(acc) / len(acc))
    assert metrics["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(acc_norm))


def test_adapter_answers_lmms_eval_requests_of_every_kind(yes_no_export, pope_files):
    """lmms-eval's own Instance objects: generation with until/max_new_tokens, log-likelihood of a document's
    choice (target given as a callable too) and the unconditional ("", choice) pair, in lmms-eval's result type."""
    import datasets
    from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
    from PIL import Image

    from vlsa.eval.lmms_eval_adapter import VLSALmms, VLSAEvalModel, lmms_loglikelihood

    # batch_size and device both in --model_args and from the CLI: no repeated keyword
    lm = VLSALmms.create_from_arg_string(f"pretrained={yes_no_export},batch_size=2,device=cpu",
                                         {"batch_size": "1", "max_batch_size": None, "device": "cuda"})
    assert (lm.core.batch_size, str(lm.device), lm.rank, lm.world_size) == (2, "cpu", 0, 1)
    rows = pope_files["rows"][:3]
    docs = datasets.Dataset.from_list([{"question": r["question"], "path": r["image"]} for r in rows])
    lm.task_dict = {"t": {"test": docs}}
    to_visual = lambda doc: [Image.open(doc["path"])]  # noqa: E731
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    gen = [Instance("generate_until", (r["question"], {"max_new_tokens": 1, "until": ["\n"]}, to_visual, i, "t",
                                       "test"), 0, dict(meta, doc_id=i)) for i, r in enumerate(rows)]
    answers = lm.generate_until(gen)
    assert len(answers) == 3 and set(answers) <= {"Yes", "No"}
    ll = [Instance("loglikelihood", (rows[0]["question"], " Yes", to_visual, 0, "t", "test"), 0, meta),
          Instance("loglikelihood", (rows[1]["question"], lambda doc: " No", to_visual, 1, "t", "test"), 0, meta),
          Instance("loglikelihood", ("", "Yes"), 0, meta)]
    out = lm.loglikelihood(ll)
    assert all(isinstance(o, GenerationResult) for o in out)
    got = [unwrap_generation_output(o)[0] for o in out]  # what the evaluator keeps
    core = VLSAEvalModel(yes_no_export, device="cpu")
    images = [Image.open(r["image"]).convert("RGB") for r in rows[:2]]
    expected = [lmms_loglikelihood(*s) for s in core.loglikelihoods(
        [(rows[0]["question"], " Yes", [images[0]]), (rows[1]["question"], " No", [images[1]]), ("", "Yes", [])])]
    assert [g[1] for g in got] == [e[1] for e in expected]
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], rel=1e-4)
    assert all(g[0] > 0 for g in got)  # negative log-likelihoods


def test_pope_parity_with_the_built_in_scorer_through_ray(single_run, yes_no_export, pope_files, cache_dir, tmp_path,
                                                         monkeypatch):
    """ray_jobs/evaluate.py (Ray Data inference + built-in POPE scorer) and lmms-eval agree on the same model."""
    import importlib.util as iu

    spec = iu.spec_from_file_location("evaluate_job", ROOT / "ray_jobs" / "evaluate.py")
    job = iu.module_from_spec(spec)
    spec.loader.exec_module(job)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    summary = job.main(["--model", yes_no_export, "--questions", pope_files["questions"], "--image-root",
                        pope_files["image_root"], "--gt", pope_files["labels"], "--benchmark", "pope", "--num-cpus",
                        "4", f"model.cache_dir={cache_dir}", "eval.max_new_tokens=1", "eval.num_actors=1",
                        "eval.batch_size=4", "run.name=pope-parity"])
    ours, theirs = summary["metrics"], single_run["results"]["results"][POPE_TASK]
    for key, their_key in (("accuracy", "pope_accuracy"), ("precision", "pope_precision"), ("recall", "pope_recall"),
                           ("f1", "pope_f1_score")):
        assert ours[key] == pytest.approx(theirs[f"{their_key},none"]), key


def test_failed_evaluation_exits_non_zero(pope_files, tmp_path):
    done = lmms_eval(["--model", "vlsa", "--model_args", f"pretrained={tmp_path / 'no-such-export'},device=cpu",
                      "--tasks", POPE_TASK, "--include_path", pope_files["tasks"], "--output_path",
                      str(tmp_path / "out")], tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "lmms-eval failed: FileNotFoundError" in done.stderr
    assert not list((tmp_path / "out").glob("**/*_results.json"))


def test_two_processes_answer_each_document_once(single_run, yes_no_export, pope_files, tmp_path):
    """torchrun with two CPU processes: lmms-eval gives each rank half the documents and gathers them."""
    done = lmms_eval(["--model", "vlsa", "--model_args", f"pretrained={yes_no_export},device=cpu,batch_size=2",
                      "--tasks", POPE_TASK, "--include_path", pope_files["tasks"], "--log_samples", "--output_path",
                      str(tmp_path / "out")], tmp_path,
                     launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", "29533"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results, samples = read_results(tmp_path / "out")
    rows = pope_files["rows"]
    assert sorted(s["doc_id"] for s in samples[POPE_TASK]) == list(range(len(rows)))  # each once, all gathered
    one = single_run["results"]["results"][POPE_TASK]
    assert results["results"][POPE_TASK] == {k: v for k, v in one.items()}
