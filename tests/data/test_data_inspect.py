"""The data inspection command: counts by reason and rendered samples, as text or one JSON object."""

from __future__ import annotations

import json

from vlsa.data import inspect


def _write(tmp_path, demo) -> str:
    rows = json.loads(open(demo.instruct).read())[:4]
    rows.append(dict(rows[0], id="escape", image="../../etc/passwd"))
    rows.append(dict(rows[0], id="gone", image="train/missing.png"))
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return str(path)


def test_json_report(tmp_path, demo, cache_dir, capsys):
    path = _write(tmp_path, demo)
    args = ["--data", path, "--image-root", demo.image_root, "--samples", "2", "--json", f"model.cache_dir={cache_dir}",
            "train.stages.1.data.ssft.p_vq=1.0", "train.stages.1.data.ssft.p_px=0.0"]
    assert inspect.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 7 and report["accepted"] == 4
    assert report["rejected"] == {"bad_json": 1, "image_missing": 1, "path_escape": 1}
    assert [s["id"] for s in report["samples"]] == ["qa-00000", "qa-00003"]
    for sample in report["samples"]:
        assert sample["text"].startswith("<s>A chat between") and "USER: " in sample["text"]
        assert sample["supervised_text"] == "".join(sample["supervised_spans"])
        assert all(span in sample["text"] for span in sample["supervised_spans"])
        assert sample["ssft"] == ["vq"] and any("<vq start>" in s for s in sample["supervised_spans"])
        assert "Note that the image resolution is [3, 32, 32]" in sample["text"]
        assert sample["visual_tokens"] == 16 and set(sample["ssft_coverage"]) == {"vq"}  # tiny SA-Perceiver: l = 16
    assert set(report["ssft_coverage"]) == {"ssft/vq_coverage"} and 0 < report["ssft_coverage"]["ssft/vq_coverage"] <= 1


def test_json_report_counts_llava_next_tokens_per_image_size(tmp_path, demo, cache_dir, capsys):
    """With the anyres projector each sample's count is LLaVA-NeXT's for its image's size."""
    from PIL import Image

    from vlsa.model.anyres import anyres_token_count

    path = _write(tmp_path, demo)
    args = ["--data", path, "--image-root", demo.image_root, "--samples", "4", "--json", "--stage", "stage1",
            f"model.cache_dir={cache_dir}", "model.projector.type=anyres", "model.recon.enabled=false",
            "train.stages.0.lr={projector: 0.001}", "train.stages.1.lr={projector: 0.001}"]
    assert inspect.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in json.loads(open(demo.instruct).read())}
    grids = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]
    for sample in report["samples"]:
        with Image.open(f"{demo.image_root}/{rows[sample['id']]['image']}") as image:
            expected = anyres_token_count(image.height, image.width, grids, 32, 8)  # tiny CLIP: 32 px, patch 8
        assert sample["visual_tokens"] == expected


def test_text_report_marks_supervised_spans(tmp_path, demo, cache_dir, capsys):
    path = _write(tmp_path, demo)
    inspect.main(["--data", path, "--image-root", demo.image_root, "--samples", "1", "--stage", "stage1",
                  f"model.cache_dir={cache_dir}"])
    out = capsys.readouterr().out
    assert "records: 7  accepted: 4  rejected: 3" in out and "  path_escape: 1" in out
    assert "<s><image>[[" in out and "]]" in out  # plain template: the caption after the image is supervised
