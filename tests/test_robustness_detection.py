"""COCO-C: config handling, the CorruptImage transform, the tool's options and resume, and an
end-to-end run with a trained detector."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
from mmengine.config import Config

from cvkit.robustness.detection import with_corruption


def _cfg(wrapped=False):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(1333, 800), keep_ratio=True),
                dict(type="PackDetInputs")]
    dataset = dict(type="CocoDataset", data_root="data/", pipeline=pipeline)
    if wrapped:
        dataset = dict(type="ClassBalancedDataset", oversample_thr=1e-3, dataset=dataset)
    return Config(dict(test_dataloader=dict(batch_size=1, dataset=dataset)))


@pytest.mark.parametrize("wrapped", [False, True])
def test_corruption_inserted_after_loading(wrapped):
    cfg = _cfg(wrapped)
    out = with_corruption(cfg, "fog", 3, seed=7)
    ds = out.test_dataloader.dataset
    ds = ds.dataset if wrapped else ds
    assert [t["type"] for t in ds.pipeline] == ["LoadImageFromFile", "CorruptImage", "Resize", "PackDetInputs"]
    assert ds.pipeline[1] == dict(type="CorruptImage", corruption="fog", severity=3, seed=7, channel_order="rgb")
    bgr = with_corruption(cfg, "fog", 3, seed=7, channel_order="bgr").test_dataloader.dataset
    assert (bgr.dataset if wrapped else bgr).pipeline[1]["channel_order"] == "bgr"
    orig = cfg.test_dataloader.dataset
    assert len((orig.dataset if wrapped else orig).pipeline) == 3  # the input config is untouched


def test_corruption_reaches_every_dataset_a_wrapper_holds():
    """ConcatDataset (``datasets``) and a wrapper with its own pipeline (MultiImageMixDataset):
    the corruption goes after LoadImageFromFile of every wrapped dataset, where images load."""
    cfg = Config(dict(test_dataloader=dict(batch_size=1, dataset=dict(
        type="ConcatDataset", datasets=[_cfg().test_dataloader.dataset, dict(
            type="MultiImageMixDataset", dataset=_cfg().test_dataloader.dataset,
            pipeline=[dict(type="PackDetInputs")])]))))
    out = with_corruption(cfg, "fog", 2).test_dataloader.dataset
    for dataset in (out.datasets[0], out.datasets[1].dataset):
        assert [t["type"] for t in dataset.pipeline] == ["LoadImageFromFile", "CorruptImage", "Resize",
                                                          "PackDetInputs"]
    assert out.datasets[1].pipeline == [dict(type="PackDetInputs")]


def test_bad_configs():
    with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
        with_corruption(_cfg(), "fog", 0)
    cfg = _cfg()
    cfg.test_dataloader.dataset.pipeline = [dict(type="Resize", scale=(1, 1))]
    with pytest.raises(ValueError, match="no LoadImageFromFile"):
        with_corruption(cfg, "fog", 1)
    with pytest.raises(ValueError, match="channel_order must be 'rgb' or 'bgr', got 'RGB'"):
        with_corruption(_cfg(), "fog", 1, channel_order="RGB")


def test_corrupt_image_transform_is_registered_and_seeded():
    """The pipeline step corrupts the BGR image as RGB, with the per-image seed of the classifier path."""
    import numpy as np
    from mmdet.registry import TRANSFORMS

    import cvkit.robustness.mmdet_transform  # noqa: F401
    from cvkit.robustness import corrupt
    from cvkit.robustness.folder import image_seed

    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    step = TRANSFORMS.build(dict(type="CorruptImage", corruption="frost", severity=2, seed=3))
    out = step(dict(img=np.ascontiguousarray(rgb[..., ::-1]), img_id=17))["img"]
    expected = corrupt(rgb, "frost", 2, seed=image_seed(3, "frost", 2, 17))
    np.testing.assert_array_equal(out[..., ::-1], expected)
    with pytest.raises(ValueError, match="unknown corruption"):
        TRANSFORMS.build(dict(type="CorruptImage", corruption="frosty", severity=2))


def test_corrupt_image_seeds_string_ids_stably():
    """COCO-style json allows string image ids: CorruptImage did int(img_id) and crashed on them
    A string is seeded by a SHA-256 digest of its text (the same in every process and run,
    unlike Python's salted hash): the same id gives the same corruption, another id another; int
    ids, and decimal strings as VOC's "000005", keep the seeds of earlier results,
    (seed, corruption index, severity, int(img_id))."""
    import hashlib

    import numpy as np
    from mmdet.registry import TRANSFORMS

    import cvkit.robustness.mmdet_transform  # noqa: F401
    from cvkit.robustness import ALL_CORRUPTIONS, corrupt

    bgr = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    step = TRANSFORMS.build(dict(type="CorruptImage", corruption="gaussian_noise", severity=3, seed=3))

    def run(img_id):
        return step(dict(img=bgr.copy(), img_id=img_id, img_path=f"{img_id}.jpg"))["img"]

    def differ(x, y):
        return np.abs(x.astype(int) - y.astype(int)).mean() > 1

    a = run("cat_0001")
    np.testing.assert_array_equal(a, run("cat_0001"))
    assert differ(a, run("cat_0002"))
    np.testing.assert_array_equal(run("000017"), run(17))  # VOC-style ids: seeded as before
    noise = ALL_CORRUPTIONS.index("gaussian_noise")
    for int_id in (17, np.int64(17)):  # today's formula, unchanged
        np.testing.assert_array_equal(
            run(int_id), corrupt(bgr[..., ::-1], "gaussian_noise", 3, seed=(3, noise, 3, 17))[..., ::-1])
    from cvkit.robustness.folder import DIGEST_BASE, image_index

    digest = int.from_bytes(hashlib.sha256(b"cat_0001").digest()[:8], "big")
    assert image_index("cat_0001") == DIGEST_BASE + digest  # no per-process salt
    assert image_index(17) == 17 and image_index(-2) >= DIGEST_BASE  # negative: not valid entropy
    with pytest.raises(ValueError, match=r"CorruptImage: \(1, 2\).jpg: image id \(1, 2\) \(tuple\): "
                                         r"expected an int or a string"):
        run((1, 2))


@pytest.mark.parametrize("corruption", ["frost", "snow", "spatter"])
def test_corrupt_image_channel_order(corruption):
    """channel_order="bgr" corrupts mmcv's BGR array as is (the published COCO-C protocol:
    mmdet's Corrupt passes it straight to imagecorruptions); "rgb" (the default) corrupts the
    RGB image and converts back to BGR. The colour-asymmetric corruptions differ between them."""
    import numpy as np
    from mmdet.registry import TRANSFORMS

    import cvkit.robustness.mmdet_transform  # noqa: F401
    from cvkit.robustness import corrupt
    from cvkit.robustness.folder import image_seed

    bgr = np.random.default_rng(1).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    bgr[:, :, 0] //= 3  # unequal channels, so swapping them matters
    seed = image_seed(5, corruption, 3, 4)

    def run(**kw):
        step = TRANSFORMS.build(dict(type="CorruptImage", corruption=corruption, severity=3, seed=5, **kw))
        return step(dict(img=bgr.copy(), img_id=4))["img"]

    published = run(channel_order="bgr")
    np.testing.assert_array_equal(published, corrupt(bgr, corruption, 3, seed=seed))
    as_rgb = run()
    np.testing.assert_array_equal(as_rgb, corrupt(bgr[..., ::-1], corruption, 3, seed=seed)[..., ::-1])
    np.testing.assert_array_equal(run(channel_order="rgb"), as_rgb)
    assert np.abs(published.astype(int) - as_rgb.astype(int)).mean() > 1
    with pytest.raises(ValueError, match="channel_order must be 'rgb' or 'bgr', got 'rbg'"):
        TRANSFORMS.build(dict(type="CorruptImage", corruption=corruption, severity=3, channel_order="rbg"))


REPO = Path(__file__).resolve().parents[1]
FASTER = REPO / "configs/detection/faster-rcnn_eca-r18_fpn_shapes.py"
MASK = REPO / "configs/detection/mask-rcnn_eca-r18_fpn_shapes.py"


def _tool():
    spec = importlib.util.spec_from_file_location("eval_corruption", REPO / "tools/eval_corruption.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_device_maps_to_lightning_with_the_gpu_index():
    from cvkit.robustness.detection import lightning_devices

    assert lightning_devices("cpu") == ("cpu", 1)
    assert lightning_devices("cuda") == ("gpu", 1)
    assert lightning_devices("cuda:1") == ("gpu", [1])  # GPU 1 itself, not one GPU (= GPU 0)
    for bad in ("cuda:x", "tpu", "cpu:0"):
        with pytest.raises(ValueError, match=rf"--device '{bad}'"):
            lightning_devices(bad)


@pytest.mark.parametrize("option", [["--baseline", "b.json"], ["--batch-size", "4"],
                                    ["--workers", "0"], ["--val", "v"], ["--resize", "96"],
                                    ["--model-arg", "global_pool=gcp"]])
def test_classifier_only_options_are_refused_for_det(option, tmp_path, capsys):
    args = ["--task", "det", "--config", str(FASTER), "--checkpoint", "x.pth",
            "--out", str(tmp_path / "o"), *option]
    assert _tool().main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {option[0]} does not apply to --task det"
                   + (" (the config's test_dataloader sets it)"
                      if option[0] in ("--batch-size", "--workers") else "")]
    assert not (tmp_path / "o").exists()


def test_report_names_the_missing_severities(tmp_path):
    """A corruption evaluated at some severities is reported with those it lacks."""
    from cvkit.robustness.metrics import coco_c_summary
    from cvkit.robustness.report import write_detection_reports

    ap = {"fog": {"1": 0.3, "3": 0.2}, "snow": {str(s): 0.25 for s in range(1, 6)}}
    state = {"clean_AP": 0.4, "AP": ap,
             "summary": coco_c_summary({c: [v.get(str(s)) for s in range(1, 6)] for c, v in ap.items()}, 0.4)}
    md = (write_detection_reports(state, tmp_path)["markdown"]).read_text()
    assert "**Incomplete**: not evaluated: gaussian_noise, shot_noise," in md
    assert "jpeg_compression (all severities); fog (severities 2, 4, 5) — mPC" in md
    assert state["summary"]["missing_severities"]["fog"] == [2, 4, 5] and "fog" in state["summary"]["missing"]


def test_channel_order_is_det_only(tmp_path, capsys):
    assert _tool().main(["--checkpoint", "x.ckpt", "--val", str(tmp_path), "--coco-c-channel-order", "bgr",
                         "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --coco-c-channel-order does not apply to --task cls\n"


@pytest.fixture
def coco_test_calls(tmp_path, monkeypatch) -> list:
    """COCO-C with cvkit's detection test replaced by a recorder (AP 0.5), in ``tmp_path`` (the
    working directory) holding a checkpoint ``det.pth`` and a data root ``data/``."""
    import cvkit.tasks.detection as det

    calls = []
    monkeypatch.setattr(det, "evaluate_detector",
                        lambda cfg, ckpt, **kw: calls.append(kw) or {"bbox_mAP": 0.5})
    (tmp_path / "det.pth").write_bytes(b"weights")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    return calls


ONE_SET = dict(corruptions=["fog"], severities=[1], progress=False)


def test_resume_compares_paths_resolved(tmp_path, coco_test_calls):
    """Relative and absolute spellings of the same config/checkpoint/data root are one run."""
    from cvkit.robustness.detection import evaluate_detector

    calls = coco_test_calls
    relative_config = os.path.relpath(FASTER, tmp_path)
    evaluate_detector(relative_config, "det.pth", "out", data_root="data", **ONE_SET)
    assert len(calls) == 2 and calls[0]["devices"] == 1  # clean + fog 1
    evaluate_detector(str(FASTER), str(tmp_path / "det.pth"), tmp_path / "out",
                      data_root=str(tmp_path / "data/../data"), **ONE_SET)
    assert len(calls) == 2  # resumed: nothing recomputed
    with pytest.raises(ValueError, match=r"different evaluation \(checkpoint: "):
        (tmp_path / "other.pth").write_bytes(b"weights")
        evaluate_detector(str(FASTER), "other.pth", "out", data_root="data", **ONE_SET)


def test_resume_reads_relative_paths_of_older_results(tmp_path, coco_test_calls):
    """A results file that recorded config and data root relative (as written before they were
    recorded resolved) resumes from an absolute spelling of the same files."""
    from cvkit.robustness.detection import evaluate_detector

    meta = {"task": "detection", "config": os.path.relpath(FASTER, tmp_path),
            "checkpoint": "det.pth", "seed": 0, "metric": "bbox_mAP", "data_root": "data"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out/results.json").write_text(json.dumps(
        {"meta": meta, "clean_AP": 0.5, "AP": {"fog": {"1": 0.4}}}))
    state = evaluate_detector(str(FASTER), str(tmp_path / "det.pth"), tmp_path / "out",
                              data_root=str(tmp_path / "data"), **ONE_SET)
    assert coco_test_calls == [] and state["AP"]["fog"]["1"] == 0.4


def test_resume_of_an_in_memory_config_compares_its_contents(tmp_path, coco_test_calls):
    """A Config built in memory has no file: it is recorded by a digest of its contents; the same
    contents resume, other contents are another evaluation."""
    from cvkit.robustness.detection import evaluate_detector

    evaluate_detector(_cfg(), "det.pth", "out", **ONE_SET)
    assert len(coco_test_calls) == 2
    state = json.loads((tmp_path / "out/results.json").read_text())
    assert state["meta"]["config"] is None and len(state["meta"]["config_sha256"]) == 64
    evaluate_detector(_cfg(), "det.pth", "out", **ONE_SET)
    assert len(coco_test_calls) == 2  # same contents: resumed
    with pytest.raises(ValueError, match=r"different evaluation \(config_sha256: "):
        evaluate_detector(_cfg(wrapped=True), "det.pth", "out", **ONE_SET)


# pretrained_backbone (tests/conftest.py): the detection tests' ECA-ResNet-18, trained once per
# session and shared with tests/test_tasks_detection.py


@pytest.mark.slow
def test_coco_c_end_to_end_on_synthetic_coco(mask_rcnn_run, tmp_path, det_root, monkeypatch):
    """tools/eval_corruption.py --task det with a trained detector (the session's fine-tuned Mask
    R-CNN, conftest.py: a random-init one scores ~0 AP everywhere): gaussian_noise at severity
    5 costs most of the clean AP, the corruption sees the image at its original size (the test
    Resize here goes to 128 px, the files are 160 px), results are saved, a rerun resumes."""
    import cvkit.robustness.mmdet_transform as transform

    seen = []

    def spy(img, *args, **kwargs):
        seen.append(img.shape)
        return corrupt(img, *args, **kwargs)

    corrupt = transform.corrupt
    monkeypatch.setattr(transform, "corrupt", spy)
    config = tmp_path / "resized.py"  # the test pipeline resizes 160 -> 128 px
    config.write_text(
        f"_base_ = {str(MASK)!r}\n"
        "test_dataloader = dict(dataset=dict(pipeline=[\n"
        "    dict(type='LoadImageFromFile'),\n"
        "    dict(type='Resize', scale=(128, 128), keep_ratio=True),\n"
        "    dict(type='LoadAnnotations', with_bbox=True),\n"
        "    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',\n"
        "                                          'scale_factor'))]))\n")
    tool = _tool()
    out = tmp_path / "out"
    args = ["--task", "det", "--config", str(config), "--checkpoint", str(mask_rcnn_run[2] / "detector.pth"),
            "--data-root", str(det_root), "--corruptions", "gaussian_noise", "--severities", "5",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert tool.main(args) == 0
    state = json.loads((out / "results.json").read_text())
    clean, noisy = state["clean_AP"], state["AP"]["gaussian_noise"]["5"]
    print(f"COCO-C synthetic: clean AP {clean:.3f}, gaussian_noise s5 AP {noisy:.3f}")
    assert clean > 0.25 and noisy < 0.5 * clean
    n_val = len(json.loads((det_root / "annotations/instances_val.json").read_text())["images"])
    assert seen == [(160, 160, 3)] * n_val  # every val image, before Resize, once
    assert state["summary"]["complete"] is False and "fog" in state["summary"]["missing"]
    assert state["summary"]["mPC"] == pytest.approx(noisy)
    for name in ("summary.json", "ap.csv", "report.md", "heatmap.png"):
        assert (out / name).is_file()
    assert "gaussian_noise" in (out / "ap.csv").read_text()
    state["AP"]["gaussian_noise"]["5"] = 0.01  # resume: a finished set is not recomputed
    (out / "results.json").write_text(json.dumps(state))
    seen.clear()
    assert tool.main(args) == 0
    assert json.loads((out / "results.json").read_text())["AP"]["gaussian_noise"]["5"] == 0.01
    assert seen == []


@pytest.mark.parametrize("order", [None, "bgr"])
def test_channel_order_reaches_the_pipeline_and_the_reports(tmp_path, coco_test_calls, monkeypatch, order):
    """--coco-c-channel-order goes into every corrupted set's CorruptImage step and is recorded
    (results.json meta, summary.json, report.md); only bgr is comparable with published COCO-C
    tables, and a results file of the other order is not resumed."""
    import cvkit.tasks.detection as det

    steps = []
    monkeypatch.setattr(det, "evaluate_detector", lambda cfg, ckpt, **kw: steps.append(
        [t for t in cfg.test_dataloader.dataset.pipeline if t["type"] == "CorruptImage"]) or {"bbox_mAP": 0.5})
    args = ["--task", "det", "--config", str(FASTER), "--checkpoint", "det.pth", "--data-root", "data",
            "--corruptions", "fog", "--severities", "1", "--device", "cpu", "--no-progress", "--out", "out"]
    assert _tool().main([*args, *(["--coco-c-channel-order", order] if order else [])]) == 0
    expected = order or "rgb"
    assert steps[0] == [] and [s["channel_order"] for s in steps[1]] == [expected]  # clean, fog 1
    assert json.loads((tmp_path / "out/results.json").read_text())["meta"]["channel_order"] == expected
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["channel_order"] == expected and summary["comparable_with_published"] is False  # incomplete
    md = (tmp_path / "out/report.md").read_text()
    assert f"- channel order: {expected}; not comparable with published COCO-C mPCs: " in md
    assert ("corrupted as RGB, the published COCO-C protocol corrupts mmcv's BGR array" in md) == (order is None)
    other = ["--coco-c-channel-order", "rgb" if order else "bgr"]
    assert _tool().main([*args, *other]) == 1  # another evaluation in the same --out


def test_cfg_options_reach_every_set_and_are_recorded(tmp_path, coco_test_calls, monkeypatch, capsys):
    """--cfg-options (as tools/test_det.py parses it) changes the config of the clean set and of every
    corrupted one; it is recorded in results.json (a tuple read back as a list still resumes), a
    rerun with other overrides is refused, a malformed pair is a usage error, --task cls refuses it."""
    import cvkit.tasks.detection as det

    seen = []
    monkeypatch.setattr(det, "evaluate_detector", lambda cfg, ckpt, **kw: seen.append(
        (cfg.test_dataloader.dataset.indices, cfg.model.test_cfg.rcnn.score_thr,
         [t["type"] for t in cfg.test_dataloader.dataset.pipeline])) or {"bbox_mAP": 0.5})
    args = ["--task", "det", "--config", str(FASTER), "--checkpoint", "det.pth", "--data-root", "data",
            "--corruptions", "fog", "--severities", "1", "--device", "cpu", "--no-progress", "--out", "out"]
    options = ["--cfg-options", "test_dataloader.dataset.indices=(0, 2)", "model.test_cfg.rcnn.score_thr=0.9"]
    tool = _tool()
    assert tool.main([*args, *options]) == 0
    assert [s[:2] for s in seen] == [((0, 2), 0.9)] * 2 and "CorruptImage" in seen[1][2]  # clean, fog 1
    meta = json.loads((tmp_path / "out/results.json").read_text())["meta"]
    assert meta["cfg_options"] == {"test_dataloader.dataset.indices": [0, 2],
                                   "model.test_cfg.rcnn.score_thr": 0.9}
    assert tool.main([*args, *options]) == 0 and len(seen) == 2  # resumed
    capsys.readouterr()
    assert tool.main([*args, "--cfg-options", "model.test_cfg.rcnn.score_thr=0.5"]) == 1
    assert "different evaluation (cfg_options: " in capsys.readouterr().err
    assert tool.main([*args, "--cfg-options", "score_thr"]) == 2
    assert capsys.readouterr().err == "error: --cfg-options expects key=value, got 'score_thr'\n"
    assert tool.main(["--checkpoint", "x.ckpt", "--val", "data", "--cfg-options", "a=1", "--out", "o"]) == 2
    assert capsys.readouterr().err == "error: --cfg-options does not apply to --task cls\n"
    assert len(seen) == 2


def test_detection_comparability():
    from cvkit.robustness.report import coco_c_comparability

    assert coco_c_comparability({"channel_order": "bgr"}, {"complete": True})[0] is True
    assert coco_c_comparability({"channel_order": "rgb"}, {"complete": True})[0] is False
    assert coco_c_comparability({}, {"complete": True})[0] is False  # results before the option: rgb
    assert coco_c_comparability({"channel_order": "bgr"}, {"complete": False})[0] is False


def test_trust_checkpoint_reads_a_runner_checkpoint(tmp_path, capsys):
    """A checkpoint with pickled objects (as mmengine's Runner saves) fails with one line advising
    --trust-checkpoint, which --task det has: with it the checkpoint reads and the run goes on
    (here to the empty data root's missing annotation file). --task cls refuses it."""
    import argparse

    import torch

    from cvkit.tasks.detection import build_detector, load_det_config

    ckpt = tmp_path / "runner.pth"
    torch.save({"state_dict": build_detector(load_det_config(FASTER)).state_dict(),
                "message_hub": argparse.Namespace(epoch=3)}, ckpt)
    (tmp_path / "empty").mkdir()
    args = ["--task", "det", "--config", str(FASTER), "--checkpoint", str(ckpt), "--data-root",
            str(tmp_path / "empty"), "--corruptions", "fog", "--severities", "1", "--device", "cpu",
            "--no-progress"]
    tool = _tool()
    runs = [tool.main(args + ["--out", str(tmp_path / "a")]),
            tool.main(args + ["--out", str(tmp_path / "b"), "--trust-checkpoint"])]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert runs == [1, 1] and len(err) == 2, (runs, err)
    assert f"cannot load detector checkpoint {str(ckpt)!r}" in err[0] and "--trust-checkpoint" in err[0]
    assert "cannot load detector checkpoint" not in err[1] and "instances_val.json" in err[1], err
    assert tool.main(["--checkpoint", "x.ckpt", "--val", str(tmp_path), "--trust-checkpoint",
                      "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --trust-checkpoint does not apply to --task cls\n"


def test_coco_c_of_a_detector_that_detects_nothing_is_ap_0(tmp_path, det_root, capsys, monkeypatch):
    """A detector with no detections (here: a score threshold above 1): mmdet's CocoMetric returns
    {} and the run stopped after the clean set ("metric 'bbox_mAP' not in the evaluator's results
    []"); its AP is 0.0 on every set, with a warning. Threshold and image count come from
    --cfg-options, which a real run applies (no detections; 2 images corrupted, not all)."""
    import torch

    import cvkit.robustness.mmdet_transform as transform
    from cvkit.tasks.detection import build_detector, load_det_config

    seen = []
    corrupt = transform.corrupt
    monkeypatch.setattr(transform, "corrupt", lambda img, *a, **kw: seen.append(img.shape) or corrupt(img, *a, **kw))
    ckpt = tmp_path / "det.pth"
    torch.save({"state_dict": build_detector(load_det_config(FASTER)).state_dict()}, ckpt)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="no detections"):
        rc = _tool().main(["--task", "det", "--config", str(FASTER), "--checkpoint", str(ckpt),
                           "--data-root", str(det_root), "--corruptions", "gaussian_noise",
                           "--severities", "1", "--device", "cpu", "--no-progress", "--out", str(out),
                           "--cfg-options", "model.test_cfg.rcnn.score_thr=1.01",
                           "test_dataloader.dataset.indices=2"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    state = json.loads((out / "results.json").read_text())
    assert state["clean_AP"] == 0.0 and state["AP"] == {"gaussian_noise": {"1": 0.0}}
    assert len(seen) == 2  # the corrupted set has the override's 2 images
