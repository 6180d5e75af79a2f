"""method=minimax (MinimaxDiffusion): the minimax terms by hand, the trainable set on a diffusers
DiT, the cached fine-tune, class chunks, the unguided sampling path and one-line errors."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from baselines.minimax import loaded
from ddapp.jobs import build
from ddapp.schemas import MinimaxSchema, UnguidedSchema, from_schema
from ddcore.errors import UserError
from ddcore.generators import minimax_finetune as mf
from ddcore.generators.dit import build_dit


def test_minimax_terms_match_a_hand_computed_case():
    real, pseudo = mf.ClassMemory(2), mf.ClassMemory(2)
    # class 0: real memory (1,0), (0,1); pseudo memory (1,1). class 1: memories still empty.
    real.push(0, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    pseudo.push(0, torch.tensor([[1.0, 1.0]]))
    x0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # classes 0, 0, 1
    labels = torch.tensor([0, 0, 1])
    rep, div = mf.minimax_terms(x0, labels, real, pseudo, lambda_r=0.5, lambda_d=0.25)
    # cos of class 0's rows with the real memory: [[1, 0], [s, s]], s = 1/sqrt 2 -> min 0
    # with the pseudo memory: [[s], [1]] -> max 1; two distinct classes in the batch
    assert rep.item() == pytest.approx(0.5 * (1 - 0.0) / 2)
    assert div.item() == pytest.approx(0.25 * 1.0 / 2)
    x0 = torch.tensor([[1.0, 2.0], [3.0, 1.0]])  # class 0 only: one class in the batch
    rep, div = mf.minimax_terms(x0, torch.tensor([0, 0]), real, pseudo, 0.5, 0.25)
    cos = torch.tensor([[1, 2], [3, 1]]) / torch.tensor([[math.sqrt(5)], [math.sqrt(10)]])
    assert rep.item() == pytest.approx(0.5 * (1 - cos.min().item()))  # min over both rows
    to_pseudo = (cos.sum(1) / math.sqrt(2)).max().item()
    assert div.item() == pytest.approx(0.25 * to_pseudo)


def test_memories_are_fifo_of_the_last_items_per_class():
    memory = mf.ClassMemory(3)
    memory.push(1, torch.arange(4.0).view(2, 2))
    memory.push(1, torch.arange(4.0, 8.0).view(2, 2))
    assert memory.get(1).tolist() == [[2, 3], [4, 5], [6, 7]] and memory.get(0) is None


def tiny_dit(classes=3):
    torch.manual_seed(0)
    return build_dit(4, 8, classes, num_layers=2, num_attention_heads=2, attention_head_dim=8, patch_size=2)


def test_only_the_intended_dit_parameters_change_in_a_finetune_step():
    from diffusers import DDPMScheduler

    model = tiny_dit()
    names = set(mf.trainable_names(model))
    # the adaLN linears' weights (norm1.linear, proj_out_1) and every other weight stay frozen
    assert "transformer_blocks.0.norm1.linear.weight" not in names
    assert "proj_out_1.weight" not in names and "pos_embed.proj.weight" not in names
    assert names == {n for n, _ in model.named_parameters() if n.endswith(".bias")} | {
        f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight" for i in range(2)
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = dict(lr=1e-2, ema_decay=0.0, label_dropout=0.0, flip=False, seed=0, lambda_r=0.1)
    settings.update(lambda_d=0.1, memory_size=4)
    module = mf.MinimaxFinetune(model, DDPMScheduler(), torch.arange(3), 3, settings)
    optimizer = module.configure_optimizers()
    batch = (torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 0]))
    for _ in range(2):  # the second step has non-empty memories: the minimax terms count
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names  # every intended parameter moved, all others bit-identical


def test_unet_and_unsupported_denoisers():
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        num_class_embeds=3,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    names = mf.trainable_names(unet)
    assert "class_embedding.weight" in names and "conv_norm_out.weight" in names
    assert not any(n.endswith("conv1.weight") or "linear_1.weight" in n for n in names)
    with pytest.raises(UserError, match="supported: DiT and U-Net"):
        mf.trainable_names(torch.nn.Linear(2, 2))


def run_cfg(make_cfg, *overrides):
    return make_cfg("method=minimax", "task=distill", *overrides)


def spy_on_training(monkeypatch) -> list:
    calls = []
    real = mf.train_chunk

    def counting(*args, **kwargs):
        meta = real(*args, **kwargs)
        calls.append(meta["trained_steps"])
        return meta

    monkeypatch.setattr(mf, "train_chunk", counting)
    return calls


def test_tiny_run_then_rerun_reads_the_cached_finetune(make_cfg, tmp_path, monkeypatch):
    calls = spy_on_training(monkeypatch)
    cfg = make_cfg("method=minimax")  # task=run: distil + students, as python run.py debug=tiny
    metrics = build(cfg.task)(cfg)
    assert metrics["method"] == "minimax" and "student/final_acc_mean" in metrics
    assert len(list((Path(cfg.paths.output_dir) / "distilled").glob("*/*.png"))) == 10 * cfg.ipc
    assert calls == [4]  # debug=tiny: 4 steps, one chunk of 10 classes
    cfg = run_cfg(make_cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "rerun")  # a new run folder: nothing to resume
    build(cfg.task)(cfg)
    assert calls == [4]  # the rerun trained 0 steps: it read the cache


def test_classes_fine_tune_in_chunks_each_cached(make_cfg, tmp_path, monkeypatch):
    calls = spy_on_training(monkeypatch)
    cfg = run_cfg(make_cfg, "method.chunk_classes=5", "method.lambda_d=0.01")
    build(cfg.task)(cfg)
    assert calls == [4, 4]
    folders = sorted(p.name for p in (Path(cfg.paths.cache_dir) / "minimax").glob("*-c*-*") if p.is_dir())
    chunked = [f for f in folders if "-c0-4-" in f or "-c5-9-" in f]
    assert len(chunked) == 2


def test_sampling_is_unguideds_with_the_finetuned_weights(make_cfg):
    cfg = run_cfg(make_cfg)
    data = build(cfg.dataset)
    generator = build(cfg.generator, data=data)
    method = build(cfg.method)
    base = {n: p.detach().clone() for n, p in generator.denoiser.named_parameters()}
    images, info = method.distill_class(data, 3, 2, 0, generator)
    assert all(torch.equal(p, base[n]) for n, p in generator.denoiser.named_parameters())  # restored
    weights = method.tuned_weights(generator, data, method.chunk_of(data, 3))
    assert any(not torch.equal(weights[n], base[n]) for n in weights)
    with loaded(generator.denoiser, weights):
        expected, _ = from_schema(UnguidedSchema).distill_class(data, 3, 2, 0, generator)
    assert torch.equal(images, expected) and info["mode_id"] == [0, 1]


def test_a_killed_finetune_resumes_from_its_checkpoint(make_cfg, monkeypatch):
    cfg = run_cfg(make_cfg, "method.lambda_r=0.003")
    data = build(cfg.dataset)
    generator = build(cfg.generator, data=data)
    method = build(cfg.method)
    calls = spy_on_training(monkeypatch)
    original_fit = mf.pl.Trainer.fit

    def crash_after_fit(self, *args, **kwargs):  # the first fit stops after 2 steps and dies
        self.fit_loop.epoch_loop.max_steps = 2
        original_fit(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(mf.pl.Trainer, "fit", crash_after_fit)
    with pytest.raises(KeyboardInterrupt):
        method.tuned_weights(generator, data, list(range(10)))
    monkeypatch.setattr(mf.pl.Trainer, "fit", original_fit)
    method.tuned_weights(generator, data, list(range(10)))
    assert calls == [2]  # the second call trained the 2 steps left of 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.memory_size=0", "method.memory_size must be >= 1"),
        ("method.lambda_r=-1", "method.lambda_r must be >= 0"),
        ("method.lambda_d=-0.5", "method.lambda_d must be >= 0"),
        ("method.chunk_classes=0", "method.chunk_classes must be >= 1"),
        ("method.finetune.batch_size=0", "method.finetune.batch_size must be >= 1"),
    ],
)
def test_bad_settings_are_one_line_errors_before_any_work(make_cfg, override, message):
    from ddapp.config_checks import check_config

    with pytest.raises(UserError, match=message):
        check_config(run_cfg(make_cfg, override))


def test_generators_that_cannot_be_finetuned_are_refused_at_once():
    target = "ddcore.generators.stable_diffusion.load_stable_diffusion"
    with pytest.raises(UserError, match="cannot fine-tune generator=sd15 .*supported: generator=dit_tiny"):
        from_schema(MinimaxSchema, generator_target=target)
    with pytest.raises(UserError, match="unknown method.finetune.epoch "):  # debug=tiny's merge
        from_schema(MinimaxSchema, overrides={"finetune": {"epoch": 3}})
