"""Paper scale, rehearsed on a CPU (``make rehearse``): real-size models and ImageNet-shaped data.

No weights or ImageNet can be downloaded here, so this builds, offline, random-weight checkpoints
at their real sizes in the hubs' exact folder layouts (``ddcore/generators/hub.py``: DiT-XL/2 with
its hub config and ``.bin`` weights, sd-vae-ft-mse as the hub ships it (no ``scaling_factor``) and
a copy that states it, Stable Diffusion v1.5 with a tokenizer written offline) and ImageNet-layout
JPEG trees (the ImageNette wnids at 500x375; all 1000 wnids small), then runs ``run.py`` as a user
would, with few classes, steps and one-epoch students where that keeps the sizes real:

- DiT-XL/2 on ImageNette (2 classes, IPC 1, 4 steps): MGD^3 (DDPM), MGD^3 (DDIM, ``class_batch``),
  MGD^3 in bf16 (where the CPU has bf16), unguided (DDIM, the VAE with ``scaling_factor``), D4M,
  ManifoldGD;
- patch selection with SD v1.5 on ImageNette (2 classes);
- the MGD^3 ImageNette Table 1 preset shrunk (2 classes, IPC 10, 1 step, one-epoch students), then
  ``experiments/paper_check.py`` on its run folder;
- ``method=random dataset=imagenet1k ipc=50 task=run`` at 224 px under
  ``torchrun --nproc_per_node=2``: 50,000 images, the set 7.5 GB as uint8, held whole by each
  rank's student, which trains 50 of its epoch's 782 steps (``+trainer.limit_train_batches``).

Each stage is one process tree; its peak resident memory is the largest of any one process in it
(``wait4``'s ``ru_maxrss``: per rank under torchrun). Writes ``results/rehearsal/summary.json``
(``{"stages": {name: {"ok", "peak_rss_gb", "wall_s", ...}}}``) and ``results/rehearsal/README.md``.
Models, data and runs live under ``--work`` (default ``.cache/rehearsal``; 20 GB of disk) and are
built once.

    python experiments/rehearse.py                 # every stage
    python experiments/rehearse.py --stages random_imagenet1k_ipc50_ddp2
    python experiments/rehearse.py --small         # the same stages at toy sizes (the slow test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "results" / "rehearsal"
PEAK_LIMIT_GB = 16.0  # per rank, ImageNet-1K IPC 50 task=run (the acceptance bar)


# -- sizes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Real sizes (the default) or toy ones (``--small``, for the slow test)."""

    dit: dict
    vae: dict
    unet: dict
    text: dict
    subset_image: tuple[int, int]  # ImageNette JPEGs (w, h)
    subset_train: int  # per class
    full_image: tuple[int, int]  # the other ImageNet-1K classes
    full_train: int  # per class: >= ipc
    full_val: int
    full_classes: int | None  # None: all 1000 wnids
    ipc_full: int
    resolution: int  # ImageNet-1K task=run
    student_width: int


REAL = Sizes(
    # DiT-XL/2 256 px: 28 blocks, hidden 1152 (16 heads x 72), patch 2, 32x32x4 latents, 675M params
    dit=dict(sample_size=32, num_layers=28, attention_head_dim=72, num_attention_heads=16),
    # sd-vae-ft-mse / SD v1.5's VAE: 83M params
    vae=dict(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=256
    ),
    # SD v1.5's UNet (860M params): diffusers' UNet2DConditionModel defaults but for the 768-wide
    # text context of CLIP ViT-L/14 and the 64x64 latents of 512 px
    unet=dict(sample_size=64, cross_attention_dim=768),
    # CLIP ViT-L/14's text tower (123M params)
    text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    subset_image=(500, 375),
    subset_train=50,  # >= ipc_full: ImageNet-1K at IPC 50 draws 50 per class from these too
    full_image=(80, 60),
    full_train=50,
    full_val=1,
    full_classes=None,
    ipc_full=50,
    resolution=224,
    student_width=8,
)
SMALL = Sizes(
    dit=dict(sample_size=8, num_layers=1, attention_head_dim=8, num_attention_heads=2),
    vae=dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, sample_size=16),
    unet=dict(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(16, 16),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ),
    text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    subset_image=(40, 30),
    subset_train=12,  # >= 10: the paper preset's IPC
    full_image=(20, 15),
    full_train=3,
    full_val=1,
    full_classes=None,
    ipc_full=2,
    resolution=32,
    student_width=4,
)


# -- models in the hubs' layouts --------------------------------------------------------------------
def build_models(model_dir: Path, sizes: Sizes, small: bool) -> dict[str, Path]:
    """Random-weight checkpoints at ``model_dir/<hub id>`` (built once; a ``.complete`` file marks
    a finished folder). Returns the extra folders stages name directly."""
    from ddcore.generators.hub import DIT_XL2_256, SD15, SD_VAE_FT_MSE

    folders = {
        DIT_XL2_256: lambda f: save_dit(f, sizes),
        SD_VAE_FT_MSE: lambda f: save_vae(f, sizes, scaling_factor=None, safetensors=True),
        "rehearsal/sd-vae-ft-mse-scaled": lambda f: save_vae(
            f, sizes, scaling_factor=0.18215, safetensors=True
        ),
        SD15: lambda f: save_sd(f, sizes),
    }
    for hub_id, build in folders.items():
        folder = model_dir / hub_id
        if (folder / ".complete").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        tic = time.perf_counter()
        build(folder)
        (folder / ".complete").write_text("")
        print(
            f"  built {hub_id} in {time.perf_counter() - tic:.0f}s ({folder_gb(folder):.2f} GB)", flush=True
        )
    return {"vae_scaled": model_dir / "rehearsal" / "sd-vae-ft-mse-scaled"}


def folder_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30


def save_dit(root: Path, sizes: Sizes) -> None:
    """facebook/DiT-XL-2-256 as converted on the hub: model_index.json, transformer/ (the legacy
    Transformer2DModel class name, .bin weights), vae/ (.bin), scheduler/ (DDIM)."""
    import torch
    from diffusers import DDIMScheduler, Transformer2DModel

    torch.manual_seed(0)
    Transformer2DModel(
        in_channels=4,
        out_channels=8,  # eps + learned variance
        patch_size=2,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        **sizes.dit,
    ).save_pretrained(root / "transformer", safe_serialization=False)
    save_vae(root / "vae", sizes, scaling_factor=None, safetensors=False)
    DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False
    ).save_pretrained(root / "scheduler")
    write_index(
        root,
        "DiTPipeline",
        {"transformer": "Transformer2DModel", "vae": "AutoencoderKL", "scheduler": "DDIMScheduler"},
    )


def save_vae(folder: Path, sizes: Sizes, scaling_factor: float | None, safetensors: bool) -> None:
    """An AutoencoderKL of sd-vae-ft-mse's shape; its config states ``scaling_factor`` only when
    given (the hub's sd-vae-ft-mse config predates the key: diffusers' 0.18215 default applies)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae["block_out_channels"]),
        **sizes.vae,
    )
    vae.save_pretrained(folder, safe_serialization=safetensors)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("scaling_factor", None)
    if scaling_factor is not None:
        config["scaling_factor"] = scaling_factor
    config_path.write_text(json.dumps(config, indent=2))


def save_sd(root: Path, sizes: Sizes) -> None:
    """stable-diffusion-v1-5: unet/, vae/, text_encoder/, tokenizer/ (a CLIP BPE written offline),
    scheduler/ (PNDM, as the hub's), model_index.json."""
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    UNet2DConditionModel(**sizes.unet).save_pretrained(root / "unet")
    save_vae(root / "vae", sizes, scaling_factor=0.18215, safetensors=True)
    text = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, **sizes.text
    )
    CLIPTextModel(text).save_pretrained(root / "text_encoder")
    write_clip_tokenizer(root / "tokenizer")
    PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True, steps_offset=1
    ).save_pretrained(root / "scheduler")
    write_index(
        root,
        "StableDiffusionPipeline",
        {
            "unet": "UNet2DConditionModel",
            "vae": "AutoencoderKL",
            "text_encoder": "CLIPTextModel",
            "tokenizer": "CLIPTokenizer",
            "scheduler": "PNDMScheduler",
        },
    )


def write_clip_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over single characters (no merges: a real vocabulary cannot be
    downloaded) with CLIP's special tokens at their real ids, below the encoder's 49,408."""
    import string

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,-'"
    vocab = {c + suffix: i for i, (c, suffix) in enumerate((c, x) for x in ("", "</w>") for c in chars)}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))


def write_index(root: Path, pipeline: str, components: dict[str, str]) -> None:
    library = {"CLIPTextModel": "transformers", "CLIPTokenizer": "transformers"}
    index = {"_class_name": pipeline, "_diffusers_version": "0.12.0"}
    index.update({sub: [library.get(name, "diffusers"), name] for sub, name in components.items()})
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


# -- ImageNet-layout data ---------------------------------------------------------------------------
def build_imagenet(root: Path, sizes: Sizes) -> None:
    """``root/{train,val}/<wnid>/*.JPEG``: the ImageNette wnids at ``subset_image`` (500x375, as
    most ImageNet photos), every other ImageNet-1K wnid at ``full_image``; smooth random colour
    fields, so JPEG sizes and decode times are those of photos rather than of noise."""
    import numpy as np
    from PIL import Image

    from ddcore.data.classes import subset_wnids

    if (root / ".complete").is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    nette = set(subset_wnids("imagenette"))
    wnids = subset_wnids("imagenet1k")[: sizes.full_classes]
    rng = np.random.default_rng(0)
    tic = time.perf_counter()
    for i, wnid in enumerate(wnids):
        big = wnid in nette
        size = sizes.subset_image if big else sizes.full_image
        for split, count in (
            ("train", sizes.subset_train if big else sizes.full_train),
            ("val", 2 if big else sizes.full_val),
        ):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
                image.save(folder / f"{wnid}_{j}.JPEG", quality=90)
        if (i + 1) % 200 == 0:
            print(f"  {i + 1}/{len(wnids)} class folders ({time.perf_counter() - tic:.0f}s)", flush=True)
    (root / ".complete").write_text("")


# -- stages ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    overrides: list[str]
    ranks: int = 1
    needs_bf16: bool = False
    estimate_s: float = 180.0  # for the ETA, measured on this machine's kind (2 cores)
    paper_check: bool = False  # then experiments/paper_check.py on the run folder must work
    notes: list[str] = field(default_factory=list)


def stages(sizes: Sizes, extra: dict[str, Path]) -> list[Stage]:
    dit = ["dataset=imagenette", "+dataset.first_classes=2", "generator=dit_xl2", "ipc=1", "method.steps=4"]
    guided = ["method.t_sg=2"]  # guide steps 3..2 of 4 (t_sg 25 of 50)
    small_eval = ["eval.epochs=1", "eval.evals=1", "eval.repeats=1", "eval.reference.enabled=false"]
    return [
        Stage("mgd3_dit_ddpm", [*dit, "method=mgd3", *guided, *small_eval], estimate_s=190),
        Stage(
            "mgd3_dit_ddim_class_batch",
            [*dit, "method=mgd3", *guided, "method.sampler=ddim", "method.class_batch=2", *small_eval],
            estimate_s=160,
        ),
        Stage(
            "mgd3_dit_bf16",
            [*dit, "method=mgd3", *guided, "sample_precision=bf16", *small_eval],
            needs_bf16=True,
            estimate_s=180,
        ),
        Stage(
            "unguided_dit_ddim_scaled_vae",
            [
                *dit,
                "method=unguided",
                "method.sampler=ddim",
                f"generator.vae={extra['vae_scaled']}",
                *small_eval,
            ],
            estimate_s=300,
        ),
        Stage("d4m_dit", [*dit, "method=d4m", *small_eval], estimate_s=250),
        Stage(
            "manifoldgd_dit",
            [
                *dit,
                "method=manifoldgd",
                *guided,
                "method.warm_steps=1",
                "method.cloud_points=50",
                *small_eval,
            ],
            estimate_s=240,
        ),
        Stage(
            "patchsel_sd15",
            [
                "dataset=imagenette",
                "+dataset.first_classes=2",
                "generator=sd15",
                "method=patchsel",
                "ipc=1",
                "method.draws=1",
                "method.images_per_class=6",
                "method.clusters=2",
                "method.top_clusters=2",
                *small_eval,
                "eval.teacher.train.epochs=1",
                "eval.teacher.train.evals=1",
            ],
            estimate_s=180,
        ),
        Stage(
            "paper_preset_mgd3_imagenette",  # a paper preset shrunk, then paper_check.py on it
            [
                "experiment=mgd3_imagenette_table1",
                "+dataset.first_classes=2",
                "ipc=10",  # an IPC of the paper's table
                "method.steps=1",
                "method.t_sg=0",  # the one step guided
                *small_eval,
            ],
            estimate_s=420,
            paper_check=True,
        ),
        Stage(
            "random_imagenet1k_ipc50_ddp2",
            [
                "method=random",
                "dataset=imagenet1k",
                f"dataset.resolution={sizes.resolution}",
                f"ipc={sizes.ipc_full}",
                "task=run",
                "eval=hard_label",
                "eval.epochs=1",
                "eval.evals=1",
                "eval.repeats=2",  # one student per rank: both hold the set
                "+trainer.limit_train_batches=50",  # the whole set held, 50 of its 782 steps trained
                f"eval.student.width={sizes.student_width}",
                "eval.reference.enabled=false",
                "report.tsne_classes=0",
                "report.max_real=10",
            ],
            ranks=2,
            estimate_s=1000,
        ),
    ]


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def command(stage: Stage, work: Path, run_dir: Path) -> list[str]:
    common = [
        f"paths.cache_dir={work / 'cache'}",
        f"paths.model_dir={work / 'models'}",
        f"dataset.root={work / 'data' / 'imagenet'}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    ]
    args = [*stage.overrides, *common]
    if stage.ranks > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={stage.ranks}",
            "run.py",
            *args,
        ]
    return [sys.executable, "run.py", *args]


def run_stage(stage: Stage, work: Path, log_dir: Path) -> dict:
    """One stage in a fresh run folder; peak RSS is the largest single process of its tree."""
    run_dir = work / "runs" / stage.name
    shutil.rmtree(run_dir, ignore_errors=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{stage.name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    tic = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            command(stage, work, run_dir), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - tic
    code = os.waitstatus_to_exitcode(status)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    check = paper_check(run_dir) if stage.paper_check and code == 0 else None
    return {
        "ok": code == 0 and bool(metrics) and (check is None or check["exit_code"] == 0),
        **({"paper_check": check} if check is not None else {}),
        "exit_code": code,
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # KiB -> GiB
        "wall_s": round(wall, 1),
        "ranks": stage.ranks,
        "images": metrics.get("distill/images"),
        "distill_s_per_image": metrics.get("distill/seconds_per_image"),
        "student_final_acc": metrics.get("student/final_acc_mean"),
        "command": " ".join(
            [
                "torchrun --standalone --nproc_per_node=2 run.py" if stage.ranks > 1 else "python run.py",
                *stage.overrides,
            ]
        ),
        **({} if code == 0 else {"last_lines": tail}),
    }


def paper_check(run_dir: Path) -> dict:
    """``experiments/paper_check.py <run>``: its exit code and what it printed."""
    done = subprocess.run(
        [sys.executable, "experiments/paper_check.py", str(run_dir)], cwd=ROOT, capture_output=True, text=True
    )
    return {"exit_code": done.returncode, "output": (done.stdout + done.stderr).strip().splitlines()}


def git_commit() -> str:
    """The checkout's commit, with ``+changes`` when tracked files differ from it."""
    try:
        head = run_git("rev-parse", "--short", "HEAD")
        dirty = run_git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def run_git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def write_readme(summary: dict, path: Path) -> None:
    rows = [
        f"| {name} | {'ok' if s.get('ok') else s.get('skipped') or 'FAILED'} | "
        f"{s.get('peak_rss_gb', '-')} | {s.get('wall_s', '-')} | {s.get('ranks', 1)} |"
        for name, s in summary["stages"].items()
    ]
    full = summary["stages"].get("random_imagenet1k_ipc50_ddp2", {})
    verdict = (
        f"ImageNet-1K IPC 50 `task=run` on 2 ranks peaked at {full['peak_rss_gb']} GB per rank "
        f"(bar: <= {PEAK_LIMIT_GB:g} GB)."
        if full.get("peak_rss_gb") is not None
        else "ImageNet-1K IPC 50 `task=run` on 2 ranks did not run."
    )
    text = f"""# Paper-scale rehearsal

`make rehearse` (`experiments/rehearse.py`) at commit {summary.get("commit", "unknown")} on
{summary["machine"]}, {summary["date"]}: random-weight
checkpoints at their real sizes in the hubs' folder layouts (DiT-XL/2, sd-vae-ft-mse with and
without `scaling_factor`, Stable Diffusion v1.5) and ImageNet-layout JPEG trees, run through
`run.py` with few classes and steps and one-epoch students (50 steps of the epoch for ImageNet-1K).
Random weights make the images and
accuracies meaningless: this checks that the paper-scale paths load, run and fit in memory, not
what they score. Peak memory is the largest resident set of any one process of a stage (per rank
under torchrun). Total wall time {summary["wall_s"] / 60:.0f} min.

| stage | result | peak RSS (GB) | wall (s) | ranks |
|---|---|---|---|---|
{chr(10).join(rows)}

{verdict} Commands: `summary.json` (`stages.<name>.command`; each also gets `paths.*`,
`dataset.root` and `hydra.run.dir` under the work folder).
"""
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "rehearsal")
    parser.add_argument("--stages", nargs="*", help="run only these stages (default: all)")
    parser.add_argument("--small", action="store_true", help="toy sizes (the slow test); writes no results/")
    parser.add_argument("--out", type=Path, default=None, help="where summary.json and README.md go")
    args = parser.parse_args()
    sizes = SMALL if args.small else REAL
    work = args.work / ("small" if args.small else "real")
    out = args.out or (work / "results" if args.small else OUT)
    start = time.perf_counter()
    print(f"building models and data under {work} (once)", flush=True)
    extra = build_models(work / "models", sizes, args.small)
    build_imagenet(work / "data" / "imagenet", sizes)
    plan = [s for s in stages(sizes, extra) if not args.stages or s.name in args.stages]
    if args.small:  # toy models: the generators' resolution follows the tiny VAE
        for stage in plan:
            if any(o.startswith(("generator=", "experiment=")) for o in stage.overrides):
                stage.overrides += ["dataset.resolution=16", "generator.resolution=16"]
    bf16 = cpu_has_bf16()
    summary_path = out / "summary.json"
    summary = (
        json.loads(summary_path.read_text()) if summary_path.is_file() and args.stages else {"stages": {}}
    )
    remaining = sum(s.estimate_s for s in plan)
    for i, stage in enumerate(plan, 1):
        if stage.needs_bf16 and not bf16:
            summary["stages"][stage.name] = {"ok": True, "skipped": "no bf16 on this CPU"}
            continue
        elapsed = time.perf_counter() - start
        print(
            f"[{i}/{len(plan)}] {stage.name} (elapsed {elapsed / 60:.1f} min, ETA {remaining / 60:.0f} min)",
            flush=True,
        )
        result = run_stage(stage, work, out / "logs" if args.small else work / "logs")
        remaining -= stage.estimate_s
        summary["stages"][stage.name] = result
        print(
            f"    {'ok' if result['ok'] else 'FAILED'}: {result['wall_s']:.0f}s, "
            f"peak {result['peak_rss_gb']} GB"
            + ("" if result["ok"] else f"\n    {' / '.join(result.get('last_lines', []))}"),
            flush=True,
        )
    summary.update(
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        date=time.strftime("%Y-%m-%d"),
        wall_s=round(time.perf_counter() - start, 1),
        bf16=bf16,
        sizes="small" if args.small else "real",
        commit=git_commit(),
    )
    out.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    write_readme(summary, out / "README.md")
    failed = [name for name, s in summary["stages"].items() if not s.get("ok")]
    print(f"wrote {summary_path}; {len(failed)} stage(s) failed{': ' + ', '.join(failed) if failed else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
