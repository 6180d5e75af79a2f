"""GPU check (`make gpu-check`): the paper-scale shapes on this machine's GPUs, with random weights.

    python experiments/gpu_check.py           # skips with one line when no CUDA device is visible
    python experiments/gpu_check.py --tiny    # the same code path with tiny shapes, on the CPU

Rows: DiT-XL/2 sampling (50 DDPM steps, CFG batch) in bf16 and fp32 at batch 1, one class's IPC
and a cross-class batch (``method.class_batch``; its note gives the largest latent difference
from the same classes sampled one at a time), with images/s and the share of the measured
bf16/fp32 matmul peak;
SD v1.5-shaped sampling at 512 px; faiss-gpu k-means on ImageNet-class-sized latents; one DDP
student step on all visible GPUs. No weights are downloaded: models are built from their
configs. FLOPs per DiT forward are counted by torch's FlopCounterMode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import ddcore  # noqa: E402,F401  (torchvision import fix)

DIT_XL2 = dict(num_layers=28, num_attention_heads=16, attention_head_dim=72, patch_size=2)
DIT_TINY = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, patch_size=2)


def timed(fn, device, repeats: int = 1) -> float:
    fn()  # warm-up (kernels, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def matmul_peak(device, dtype, n: int) -> float:
    """FLOP/s of a large square matmul: the practical peak the shares below are taken of."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, repeats=10)


def dit_generator(device, dtype, arch: dict, latent: int):
    from ddcore.generators.base import ClassConditionalGenerator, PixelIdentityCodec
    from ddcore.generators.dit import build_dit

    torch.manual_seed(0)
    model = build_dit(4, latent, 1000, learned_variance=True, **arch).to(device, dtype)
    schedule = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False}
    codec = PixelIdentityCodec()  # sampling cost only: latents are not decoded here
    gen = ClassConditionalGenerator(
        model,
        codec,
        schedule,
        resolution=latent,
        image_channels=3,
        cfg_scale=4.0,
        cfg_channels=3,
        model_classes=1000,
        null_label=1000,
        timestep_spacing={"ddpm": "linspace"},
    )
    return gen


def forward_flops(gen, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *gen.latent_shape, device=gen.device, dtype=gen.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gen.denoise(
            x, torch.tensor(500, device=gen.device), torch.zeros(batch, dtype=torch.long, device=gen.device)
        )
    return float(counter.get_total_flops())


def dit_rows(device, tiny: bool, steps: int, ipc: int, classes: int) -> list[tuple]:
    """Through the sampling methods' own path (``UnguidedSampling.class_latents``: per-sample
    noise generators): one sample, one class's IPC, and ``classes`` classes in one batch
    (``method.class_batch``), the last compared with the same classes sampled one at a time."""
    from ddapp.schemas import UnguidedSchema, from_schema

    arch, latent = (DIT_TINY, 8) if tiny else (DIT_XL2, 32)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        peak = matmul_peak(device, dtype, 256 if tiny else 8192)
        gen = dit_generator(device, dtype, arch, latent)
        name = f"{'tiny DiT' if tiny else 'DiT-XL/2'} {str(dtype).split('.')[-1]}"
        one_at_a_time = None  # images/s of the official loop (one image per sampler call)
        for label, per_class, labels in (
            ("batch 1", 1, [0]),
            (f"IPC {ipc}", ipc, [0]),
            (f"{classes} classes x IPC {ipc} (class_batch {classes})", ipc, list(range(classes))),
        ):
            method = from_schema(UnguidedSchema, steps=steps, class_batch=len(labels))
            n = per_class * len(labels)

            def sample(method=method, labels=labels, per_class=per_class, gen=gen):
                return method.class_latents(gen, labels, per_class, seed=0)

            seconds = timed(sample, device)
            flops = forward_flops(gen, 2 * n) * steps  # CFG: conditional + null rows
            note = f"{100 * flops / seconds / peak:.1f}% of matmul peak"
            rate = n / seconds
            if one_at_a_time is None:
                one_at_a_time = rate
                note += " (the official loop: one image per call)"
            else:
                note += f"; {rate / one_at_a_time:.1f}x the official one-image loop"
            if len(labels) > 1:
                diff = same_either_way(method, gen, labels, ipc)
                note += f"; max |latent diff| vs one class per batch {diff:.1e}"
            rows.append((f"{name} {label}", f"{rate:.2f} img/s", note))
    return rows


def same_either_way(method, gen, labels: list[int], ipc: int) -> float:
    """Largest difference between the cross-class latents and those of each class on its own
    (0 where the denoiser's rows do not depend on the batch; float rounding otherwise)."""
    from ddapp.schemas import UnguidedSchema, from_schema

    together = method.class_latents(gen, labels, ipc, seed=0)
    alone = from_schema(UnguidedSchema, steps=method.steps)
    return max(
        float((part - alone.class_latents(gen, [label], ipc, seed=0)[0]).abs().max())
        for label, part in zip(labels, together)
    )


def sd_row(device, tiny: bool, steps: int) -> tuple:
    from diffusers import UNet2DConditionModel

    if tiny:
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
        size, tokens, width = 8, 8, 32
    else:  # SD v1.5's U-Net config (diffusers defaults are SD v1's)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        size, tokens, width = 64, 77, 768
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet = unet.to(device, dtype).eval()
    x = torch.randn(2, 4, size, size, device=device, dtype=dtype)
    text = torch.randn(2, tokens, width, device=device, dtype=dtype)

    @torch.no_grad()
    def sample():
        for t in range(steps):
            unet(x, t, encoder_hidden_states=text)

    seconds = timed(sample, device)
    what = "tiny SD U-Net" if tiny else "SD v1.5 U-Net 512 px (latent 64), bf16, CFG batch"
    return (what, f"{1 / seconds:.2f} img/s", f"{steps} steps")


def faiss_row(tiny: bool) -> tuple:
    from ddcore.kmeans import kmeans

    n, d, k = (200, 64, 10) if tiny else (1300, 4 * 32 * 32, 50)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(n, d, device=device)
    try:
        import faiss  # noqa: F401

        backend = "faiss"
    except ImportError:
        backend = "torch"
    seconds = timed(lambda: kmeans(x, k, seed=0, iterations=50, backend=backend), torch.device(device))
    gpu = backend == "faiss" and device == "cuda" and hasattr(sys.modules["faiss"], "StandardGpuResources")
    return (f"k-means {n} x {d}, k = {k} ({backend}{', GPU' if gpu else ''})", f"{seconds:.2f} s", "")


def ddp_step(rank: int, world: int, port: int, tiny: bool, out) -> None:
    import torch.distributed as dist

    from eval.students import ResNet18

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    size = 32 if tiny else 224
    net = ResNet18(3, 10, size, width=8 if tiny else 64).to(device)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[rank] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8 if tiny else 64, 3, size, size, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    seconds = timed(step, device)
    if rank == 0:
        out.put(seconds)
    dist.destroy_process_group()


def ddp_row(tiny: bool) -> tuple:
    import torch.multiprocessing as mp

    world = max(1, torch.cuda.device_count()) if not tiny else 2
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(ddp_step, args=(world, 29511, tiny, out), nprocs=world, start_method="spawn")
    seconds = out.get()
    return (
        f"DDP student step, ResNet-18, {world} process(es)",
        f"{seconds * 1000:.0f} ms/step",
        "nccl" if torch.cuda.is_available() else "gloo",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (code path)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default results/gpu/<date>.md)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not args.tiny and not torch.cuda.is_available():
        print("gpu-check: skipped, no CUDA device is visible")
        return 0
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the official DiT sampler
        torch.backends.cudnn.allow_tf32 = True
        print(f"gpu-check on {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    steps = 2 if args.tiny else 50
    rows = dit_rows(device, args.tiny, steps, ipc=10, classes=2 if args.tiny else 10)
    rows += [sd_row(device, args.tiny, steps), faiss_row(args.tiny), ddp_row(args.tiny)]
    width = max(len(r[0]) for r in rows)
    table = [f"| {'what'.ljust(width)} | rate | note |", f"|{'-' * (width + 2)}|---|---|"]
    table += [f"| {what.ljust(width)} | {rate} | {note} |" for what, rate, note in rows]
    print("\n".join(table))
    out = args.out or (None if args.tiny else ROOT / "results" / "gpu" / f"{time.strftime('%Y-%m-%d')}.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(device, table, time.perf_counter() - started, args.tiny))
        print(f"wrote {out}")
    return 0


def report(device, table: list[str], seconds: float, tiny: bool) -> str:
    """The check's Markdown report: where it ran, with what, how long, the table."""
    where = (
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        if device.type == "cuda"
        else "CPU (--tiny: code path only, no timings worth reading)"
    )
    return (
        f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"`python experiments/gpu_check.py{' --tiny' if tiny else ''}` (`make gpu-check`) on {where}; "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; {seconds / 60:.1f} min in all. "
        "Random weights at the real shapes (nothing downloaded); rates include CFG's doubled batch.\n\n"
        + "\n".join(table)
        + "\n"
    )


if __name__ == "__main__":
    sys.exit(main())
