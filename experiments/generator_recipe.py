"""Recipe search for the self-trained generators: one training run, probed at several lengths.

Trains ``generator=<name>`` (Hydra overrides as extra arguments) on a dataset once and, at each
``--at`` step, probes the EMA (or raw) weights: generated-sample accuracy judged by a classifier
trained on the real train split, the probe's own real test accuracy, and the per-class mean
pairwise distance of generated vs real images. One JSON line per probe point goes to ``--out``.

    OMP_NUM_THREADS=1 python experiments/generator_recipe.py --at 500,1000,2000 \
        generator=unet_tiny dataset=digits generator.train.epochs=100
    OMP_NUM_THREADS=1 python experiments/generator_recipe.py --cfg 1.5,2,3 \
        --folder ddcore/generators/weights/digits-unet_tiny-<key> generator=unet_tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import ddcore  # noqa: E402,F401  (before lightning: the torchvision import fix)

os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ddapp.schemas import register  # noqa: E402
from ddcore.generators.probe import probe_report  # noqa: E402
from ddcore.generators.self_trained.cache import saved_generator  # noqa: E402
from ddcore.generators.self_trained.training import train_denoiser  # noqa: E402


class Snapshots(pl.Callback):
    """Copies of the sampling weights (EMA when on) at the given optimizer steps."""

    def __init__(self, at: list[int]):
        self.at, self.states, self.seconds = set(at), {}, {}
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step in self.at and trainer.global_step not in self.states:
            self.states[trainer.global_step] = copy.deepcopy(module.sampling_model().state_dict())
            self.seconds[trainer.global_step] = round(time.perf_counter() - self.start, 1)


def compose_cfg(overrides: list[str]):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", "trainer=cpu", *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", default="", help="steps to probe at (comma-separated)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--probe-steps", type=int, default=50)
    parser.add_argument("--cfg", default="", help="CFG scales to probe (default: the config's)")
    parser.add_argument(
        "--folder",
        type=Path,
        help="probe this trained generator folder instead of training (e.g. a shipped one, at several --cfg)",
    )
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default="logs/generator_recipe.jsonl")
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = compose_cfg(overrides)
    data = instantiate(cfg.dataset)
    gen = OmegaConf.to_container(cfg.generator, resolve=True)
    spec = {k: gen[k] for k in ("name", "family", "arch", "train", "schedule", "resolution", "seed")}
    snaps = Snapshots([int(s) for s in args.at.split(",") if s])
    if args.folder:
        meta = json.loads((args.folder / "meta.json").read_text())
        spec = meta["spec"]
        snaps.states[meta["steps"]], snaps.seconds[meta["steps"]] = None, meta["train_seconds"]
        generator = saved_generator(args.folder, spec, data, gen["cfg_scale"], gen.get("timestep_spacing"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            meta = train_denoiser(
                data, spec, Path(tmp), {"accelerator": "cpu", "devices": 1}, callbacks=[snaps]
            )
            snaps.states.setdefault(meta["steps"], None)
            snaps.seconds.setdefault(meta["steps"], meta["train_seconds"])
            generator = saved_generator(Path(tmp), spec, data, gen["cfg_scale"], gen.get("timestep_spacing"))
    final = copy.deepcopy(generator.denoiser.state_dict())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    scales = [float(s) for s in args.cfg.split(",") if s] or [gen["cfg_scale"]]
    for step, scale in ((s, c) for s in sorted(snaps.states) for c in scales):
        generator.denoiser.load_state_dict(snaps.states[step] or final)
        generator.cfg_scale = scale
        start = time.perf_counter()
        report = probe_report(generator, data, args.per_class, steps=args.probe_steps)
        row = {
            "label": args.label,
            "overrides": overrides,
            "step": step,
            "cfg": scale,
            "train_seconds": snaps.seconds[step],
            "probe_seconds": round(time.perf_counter() - start, 1),
            **{k: v for k, v in report.items() if k != "diversity_per_class"},
            "parameters": meta["parameters"],
        }
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
