#!/usr/bin/env python
"""Convert a checkpoint to a clean cvkit state dict file (tensors only, cvkit names, atomic write).

    python tools/convert_checkpoint.py IN OUT [--model NAME [--model-arg KEY=VALUE ...]]
                                              [--kind auto|mmdet-legacy]

``--kind auto`` (default) reads every format ``cvkit.load_checkpoint`` reads: the official ECA-Net
and iSQRT-COV / fast-MPN-COV releases, torchvision and timm state dicts, cvkit/Lightning ``.ckpt``.
``--model NAME`` also checks the result by loading it strictly into ``cvkit.create_model(NAME)``
(ECA kernel sizes and the GCP width are read from the checkpoint, and a cvkit training
checkpoint's model_kwargs) and prints what it inferred; ``--model-arg`` passes further model
arguments, e.g. ``--model eca_resnet18 --model-arg global_pool=gcp`` for plain weights of the
demo's model (values are Python literals, else strings). With ``--model`` the file also records
the model and all these arguments (:func:`_with_settings`), so that
``cvkit.create_model(NAME, checkpoint_path=OUT)`` rebuilds the verified network, e.g. a GCP run's
``gcp_iters`` or a ViT's ``img_size``, which no tensor shows.
``--kind mmdet-legacy`` converts an MMDetection 1.x detector checkpoint (e.g. the ECA-Net Mask R-CNN release) with
``cvkit.det.convert.convert_legacy_mmdet_checkpoint``.
"""
from __future__ import annotations

import argparse
import importlib
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/convert_checkpoint.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint to read (.pth, .pth.tar, .ckpt)")
    p.add_argument("output", help="where to write the cvkit state dict")
    p.add_argument("--kind", choices=("auto", "mmdet-legacy"), default="auto")
    p.add_argument("--model", help="cvkit preset to verify the result against (strict load)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a model argument for --model (repeatable), e.g. global_pool=gcp")
    p.add_argument("--unsafe", action="store_true",
                   help="load with weights_only=False (only for files you trust)")
    return p.parse_args(argv)


def _mmdet_converter():
    try:
        module = importlib.import_module("cvkit.det.convert")
    except ModuleNotFoundError as e:
        raise SystemExit(f"error: --kind mmdet-legacy needs cvkit.det.convert, which is not "
                         f"available ({e})") from None
    fn = getattr(module, "convert_legacy_mmdet_checkpoint", None)
    if fn is None:
        raise SystemExit("error: --kind mmdet-legacy needs "
                         "cvkit.det.convert.convert_legacy_mmdet_checkpoint, which is not defined")
    return fn


def main(argv=None) -> int:
    args = parse_args(argv)
    from cvkit.models.checkpoint import read_checkpoint_and_arguments, save_state_dict
    from cvkit.models.convert import to_cvkit

    try:
        from cvkit.models.factory import parse_model_args
        from cvkit.tool_errors import OptionError

        given = parse_model_args(args.model_arg)  # options first, before reading the file
        if given and not args.model:
            raise OptionError("--model-arg needs --model (the preset the arguments are for)")
        preset = None
        if args.model:
            from cvkit.models.registry import get_preset

            preset = get_preset(args.model).name
        state_dict, trained_with = read_checkpoint_and_arguments(args.input, preset,
                                                                 weights_only=not args.unsafe)
        if args.kind == "mmdet-legacy":
            state_dict = _mmdet_converter()(state_dict)
            print("evaluate it with its configs/detection/legacy_1.x/*_v1.py config (MMDetection "
                  "1.x's anchors, box coder and RoIAlign, with which it was trained; the mmdet 3 "
                  "settings of the other configs score it lower)")
            _print_backbone_eca_sizes(state_dict)
        else:
            state_dict = to_cvkit(state_dict)
        if args.model:
            import cvkit

            kwargs = {**_inferred(args.model, state_dict, given, trained_with), **given}
            try:
                model = cvkit.create_model(args.model, checkpoint_path=None, **kwargs)
            except TypeError as e:  # e.g. a misspelt --model-arg key
                if not given:
                    raise
                from cvkit.tasks.classification import model_kwargs_error

                raise model_kwargs_error(args.model, given, e, "--model-arg") from None
            from cvkit.models.checkpoint import load_state_dict

            load_state_dict(model, state_dict, strict=True, source=args.input)
            state_dict = _with_settings(state_dict, preset, kwargs)
        save_state_dict(state_dict, args.output)
    except Exception as e:  # a user's mistake is one line (exit 2 or 1, cvkit.tool_errors)
        from cvkit.tool_errors import is_user_error, report

        if not is_user_error(e):
            raise
        return report(e)
    print(f"wrote {len(state_dict)} tensors to {args.output}")
    return 0


def _print_backbone_eca_sizes(detector_state) -> None:
    """A converted detector's ECA kernel sizes: tools/test_det.py reads them from the file;
    mmdet's own init_detector / Runner build the config first and need them in it, and no
    backbone ``init_cfg``: CvkitBackbone reads that checkpoint while building, and its sizes win."""
    from cvkit.det.convert import CVKIT_BACKBONE_PREFIX as PREFIX
    from cvkit.models.convert import infer_eca_k_size

    k = infer_eca_k_size({key[len(PREFIX):]: v for key, v in detector_state.items()
                          if key.startswith(PREFIX)})
    if k is not None:
        options = {"model.backbone.init_cfg": None, "model.backbone.model_kwargs.eca_k_size": k}
        flags = " ".join(f"{key}=None" if v is None else f'{key}="{v}"' for key, v in options.items())
        print(f"backbone ECA kernel sizes {k}: tools/test_det.py reads them from the converted file; "
              f"mmdet's init_detector / Runner need them in the config and the backbone's ImageNet "
              f"init_cfg cleared: init_detector(config, checkpoint, cfg_options={options!r}), "
              f"or --cfg-options {flags}")


def _with_settings(state_dict, preset: str, kwargs: dict):
    """``state_dict`` with the settings it was verified with as its ``hyper_parameters``
    attribute, shaped as a training checkpoint's entry (``{"model_name", "model_kwargs"}``), which
    ``create_model(..., checkpoint_path=...)`` reads the same way: tensors alone rebuilt e.g. a
    ``gcp_iters=1`` run with the default 5, silently. An attribute, as torch's own ``_metadata``,
    not an entry: the file stays a plain dict of tensors for ``model.load_state_dict(torch.load(f))``
    and timm, and a top-level ``hyper_parameters`` would make tools/test.py take it for a training
    checkpoint."""
    from collections import OrderedDict

    out = OrderedDict(state_dict)
    out.hyper_parameters = {"model_name": preset, "model_kwargs": dict(kwargs)}
    return out


def _inferred(name: str, state_dict, given: dict, trained_with: dict) -> dict:
    """Arguments the checkpoint fixes (as ``create_model(..., checkpoint_path=...)`` reads
    them: a cvkit training checkpoint's model_kwargs ``trained_with``, then what the tensors show),
    printed for the user (``given``: the --model-arg arguments, which win)."""
    from cvkit.models.factory import checkpoint_arguments
    from cvkit.models.registry import get_preset

    kw = checkpoint_arguments(get_preset(name), state_dict, given, trained_with)
    print(f"{name}: " + (", ".join(f"{k}={v}" for k, v in kw.items()) or "no inferred arguments"))
    return kw


if __name__ == "__main__":
    sys.exit(main())
