"""Benchmark of the hard-label protocol's data path (``make bench``).

Per resolution (28px: 100 digits upsampled, ConvNet-3; 224px: RGB images, ConvNet-6; width 128)
it times one training epoch (medians over ``--rounds`` fits of ``--epochs`` epochs each, warm-up
epochs left out) of:

- ``protocol``: the protocol as it runs: the set held as one uint8 tensor, batches gathered by
  index, RandomResizedCrop + flip + color jitter + lighting as batched tensor ops, CutMix; the
  time spent in that data path is also timed directly inside the epoch;
- ``pre-augmented``: the same Lightning module on batches augmented beforehand (forward +
  backward + step only): the difference to ``protocol`` is what the data path adds. The two
  alternate epoch by epoch inside one fit, so drifting load on a shared machine hits both alike;
- ``pil``: a DataLoader decoding PNGs each epoch with torchvision's PIL transforms per image
  (RandomResizedCrop, flip, ColorJitter, ToTensor, lighting) and the same CutMix;
- ``raw loop``: forward + backward + step on pre-augmented batches without Lightning.

It also times the augmentation of the whole set alone (batched tensors vs PIL per image).

    python experiments/bench_eval.py [--epochs 4] [--epochs-small 16] [--rounds 2] [--threads 1]
                                     [--n224 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ddcore  # noqa: E402,F401  (torchvision import fix, before lightning imports torchvision)

# isort: split
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from ddcore.data.base import resize_images, to_uint8  # noqa: E402
from ddcore.data.small import digits  # noqa: E402
from ddcore.distilled import random_real_subset  # noqa: E402
from eval.augment import BatchAugment, lighting  # noqa: E402
from eval.batches import TrainSet  # noqa: E402
from eval.student_module import StudentModule  # noqa: E402
from eval.students import ConvNet, with_normalization  # noqa: E402

OPTIM = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, milestones=(2 / 3, 5 / 6), gamma=0.2)
AUGMENT = dict(scale=(0.5, 1.0), flip=True, color_jitter=(0.4, 0.4, 0.4), lighting=0.1)


class EpochTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        sync(module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync(module.device)
        self.times.append(time.perf_counter() - self._start)


class ABModule(StudentModule):
    """Alternates epochs: even ones run the protocol's data path (gather, augmentation, CutMix;
    timed directly), odd ones train the same network on pre-augmented batches (gather only)."""

    def __init__(self, *args, pre_augmented: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("pre_bank", pre_augmented, persistent=False)
        self.data_seconds: list[float] = []

    @property
    def protocol_epoch(self) -> bool:
        return self.current_epoch % 2 == 0

    def on_train_epoch_start(self):
        if self.protocol_epoch:
            self.data_seconds.append(0.0)

    def training_step(self, batch, batch_idx):
        if not self.protocol_epoch:
            x = self.pre_bank[batch].float().div_(255.0)
            return F.cross_entropy(self(x), self.bank_labels[batch])
        sync(self.device)
        start = time.perf_counter()
        x, y = self.train_batch(batch)
        x, target = self.cutmix(x, y)
        sync(self.device)
        self.data_seconds[-1] += time.perf_counter() - start
        return F.cross_entropy(self(x), target)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def the_set(res: int, n224: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28px: 10 digits per class (grayscale). 224px: n224 digits, coloured per class (RGB)."""
    if res == 28:
        s = random_real_subset(digits(resolution=28), ipc=10, seed=0)
        return s.images, s.labels
    s = random_real_subset(digits(resolution=32), ipc=max(1, n224 // 10), seed=0)
    tint = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.3
    rgb = resize_images(s.images, res).repeat(1, 3, 1, 1) * tint[s.labels]
    return rgb.clamp(0, 1), s.labels


def student(channels: int, res: int) -> torch.nn.Module:
    return with_normalization(ConvNet(channels, 10, res, width=128), channels)


def fit_epochs(module, loader, epochs: int, device: str, skip: int = 1) -> list[float]:
    """Epoch times after the first ``skip`` epochs (warm-up)."""
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, loader)
    return timer.times[skip:]


class PILSet(torch.utils.data.Dataset):
    """PNG bytes decoded and transformed per image, per epoch (an ImageFolder pipeline)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms as T

        self.png = []
        for image in to_uint8(images):
            buffer = io.BytesIO()
            array = image.permute(1, 2, 0).squeeze(-1).numpy()
            Image.fromarray(array).save(buffer, format="PNG")
            self.png.append(buffer.getvalue())
        self.labels = labels
        res = images.shape[-1]
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(res, scale=(0.5, 1.0)),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4),
                T.ToTensor(),
            ]
        )
        self.rng = torch.Generator().manual_seed(0)

    def __len__(self):
        return len(self.png)

    def __getitem__(self, i):
        with Image.open(io.BytesIO(self.png[i])) as im:
            x = self.transform(im)
        return lighting(x[None], self.rng, 0.1)[0], self.labels[i]


def augment_only(images: torch.Tensor, device: str, repeats: int = 5) -> tuple[float, float]:
    """Seconds to augment the whole set: batched tensor ops vs PIL per image."""
    batched = BatchAugment(**AUGMENT, seed=0)
    x = images.to(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        batched(x)
        sync(device)
        times.append(time.perf_counter() - start)
    pil = PILSet(images, torch.zeros(len(images), dtype=torch.long))
    start = time.perf_counter()
    for _ in range(2):
        for i in range(len(pil)):
            pil[i]
    return statistics.median(times), (time.perf_counter() - start) / 2


def raw_loop(net, images, labels, batch_size: int, epochs: int, device: str) -> list[float]:
    net = net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images, labels = images.to(device), labels.to(device)
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        for i in torch.randperm(len(images)).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(net(images[i]), labels[i]).backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def bench(res: int, epochs: int, rounds: int, n224: int, device: str) -> dict:
    """Protocol and pre-augmented epochs alternate inside one fit (load drifts hit both alike);
    the PIL loader and the raw loop are separate fits, interleaved over ``rounds``."""
    images, labels = the_set(res, n224)
    channels, n = images.shape[1], len(images)
    batch = min(64, n)
    train = TrainSet.from_images(images, labels)
    pre = BatchAugment(**AUGMENT, seed=1)(images).clamp(0, 1)
    pil_loader = torch.utils.data.DataLoader(PILSet(images, labels), batch_size=batch, shuffle=True)
    times: dict[str, list[float]] = {"protocol": [], "pre_augmented": [], "pil": [], "raw_loop": []}
    data_path: list[float] = []
    for _ in range(rounds):
        pl.seed_everything(0, verbose=False)
        module = ABModule(
            student(channels, res),
            10,
            2 * epochs,
            OPTIM,
            BatchAugment(**AUGMENT, seed=0),
            1.0,
            train,
            pre_augmented=to_uint8(pre),
        )
        ab = fit_epochs(module, train.loader(batch, 0), 2 * epochs, device, skip=2)
        times["protocol"] += ab[0::2]
        times["pre_augmented"] += ab[1::2]
        data_path += module.data_seconds[1:]
        module = StudentModule(student(channels, res), 10, epochs, OPTIM, None, 1.0, None)
        times["pil"] += fit_epochs(module, pil_loader, epochs, device)
        times["raw_loop"] += raw_loop(student(channels, res), pre, labels, batch, epochs, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    batched_aug, pil_aug = augment_only(images, device)
    return {
        "resolution": res,
        "images": n,
        "batch_size": batch,
        "epochs_timed": len(times["protocol"]),
        **{f"{k}_s": v for k, v in med.items()},
        "data_path_s": statistics.median(data_path),
        "data_path_share": statistics.median(data_path) / med["protocol"],
        "protocol_vs_pre_augmented": med["protocol"] / med["pre_augmented"] - 1,
        "pil_vs_protocol": med["pil"] / med["protocol"],
        "augment_batched_s": batched_aug,
        "augment_pil_s": pil_aug,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs per fit at 224px (the first is not timed)"
    )
    parser.add_argument("--epochs-small", type=int, default=16, help="epochs per fit at <= 64px")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved fits per variant")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default; 1 on a machine shared with other jobs)",
    )
    parser.add_argument("--n224", type=int, default=20, help="images at 224px (CPU: keep it small)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--out", default="logs/bench/bench_eval.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        bench(res, args.epochs_small if res <= 64 else args.epochs, args.rounds, args.n224, args.device)
        for res in args.resolutions
    ]
    print(
        f"\nhard-label epoch, {args.device}, {torch.get_num_threads()} thread(s), ConvNet-D width 128, "
        f"batch 64 (medians over {args.rounds} fits per variant)\n"
    )
    print(
        "| res | images | epochs timed | protocol epoch | of which data path | pre-augmented epoch "
        "| difference | PIL loader epoch | PIL / protocol | raw loop | augment set: batched / PIL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['resolution']} | {r['images']} | {r['epochs_timed']} | {r['protocol_s'] * 1e3:.0f} ms "
            f"| {r['data_path_s'] * 1e3:.1f} ms ({r['data_path_share'] * 100:.1f}%) "
            f"| {r['pre_augmented_s'] * 1e3:.0f} ms | {r['protocol_vs_pre_augmented'] * 100:+.1f}% "
            f"| {r['pil_s'] * 1e3:.0f} ms | {r['pil_vs_protocol']:.2f}x | {r['raw_loop_s'] * 1e3:.0f} ms "
            f"| {r['augment_batched_s'] * 1e3:.1f} / {r['augment_pil_s'] * 1e3:.1f} ms |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"device": args.device, "threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
