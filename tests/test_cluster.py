"""Several processes of one job (issue 14), started for real: each piece of work done once, one
run folder, one logger run, results equal to one process; a dead rank stops the others within
the timeout and the folder resumes; a student killed mid-training resumes from its checkpoint;
``trainer=ddp`` trains one student over two gloo processes.

The ranks run ``run.py`` with the environment torchrun gives its workers (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``...), each forked from one warm interpreter (tests/run_ranks.py),
so the imports are paid once for all the jobs. Tiny settings: random real images, ConvNet-16.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.scores import assert_students_scored

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "debug=tiny",
    "method=random",
    "eval.repeats=2",
    "eval.epochs=24",
    "eval.evals=4",
    "eval.checkpoint_every=2",
    "eval.reference.cache_dir=null",  # every reference student trained (and counted) in each run
    "report.tsne_classes=0",
    "cluster.timeout_s=3",
]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
STUDENTS = ["student/rep0", "student/rep1", "full/rep0", "random/rep0", "random/rep1"]
TIMEOUT_S = 3


def results(folder: Path) -> dict:
    """metrics.json without the numbers that measure time."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def trained(output: str) -> list[str]:
    """The students a process trained, from its ``trained <prefix>/rep<r> on rank ...`` lines."""
    return [line.split(" trained ")[1].split()[0] for line in output.splitlines() if " trained " in line]


def written_classes(output: str) -> list[str]:
    return [line.split(": class ")[1].split()[0] for line in output.splitlines() if ": class " in line]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Every job of this module, one after the other in one warm interpreter."""
    from ddcore.distributed import Shard
    from eval.records import StudentRecords

    work = tmp_path_factory.mktemp("cluster")
    victim = StudentRecords(shard=Shard(0, 2)).owner("student", 0)
    assert victim == 1  # rank 0 is the one that waits for the others' students
    base = [*SETTINGS, f"paths.cache_dir={work}"]
    killed = [*base, "logger=none", f"hydra.run.dir={work / 'killed'}"]
    ddp = [*base, *DDP, "eval.repeats=1", "eval.reference.enabled=false", "logger=none"]
    spec = {
        "one": {"argv": [*base, "logger=none", f"hydra.run.dir={work / 'one'}"]},
        # no hydra.run.dir: the default, time-stamped folder must be the same on both ranks
        "two": {"world": 2, "argv": [*base, "logger=csv", f"paths.log_dir={work / 'logs'}"]},
        "killed": {
            "world": 2,
            "argv": killed,
            "kill": {"rank": victim, "once": str(work / "killed" / "checkpoints" / "student" / "rep0.ckpt")},
        },
        "rerun": {"argv": killed},
        "ddp_plain": {"argv": [*ddp, f"hydra.run.dir={work / 'plain'}"]},
        "ddp": {"world": 2, "argv": [*ddp, f"hydra.run.dir={work / 'ddp'}"]},
    }
    for job in spec.values():
        job["cwd"] = str(work)
    (work / "jobs.json").write_text(json.dumps(list(spec.values())))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "run_ranks.py"), str(work / "jobs.json")],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=900,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = dict(zip(spec, json.loads(proc.stdout.splitlines()[-1])))
    return work, done


def test_one_process_trains_every_student(jobs):
    _, done = jobs
    (one,) = done["one"]
    assert one["rc"] == 0, one["output"][-3000:]
    assert Counter(trained(one["output"])) == Counter(STUDENTS)


def test_two_processes_one_folder_each_piece_once_same_metrics(jobs):
    work, done = jobs
    (rank0, rank1) = done["two"]
    assert rank0["rc"] == 0 and rank1["rc"] == 0, (rank0["output"][-3000:], rank1["output"][-3000:])
    folders = list((work / "logs" / "runs").iterdir())
    assert len(folders) == 1, folders
    run = folders[0]
    outputs = rank0["output"] + rank1["output"]
    assert Counter(written_classes(outputs)) == Counter(str(c) for c in range(10))  # each once
    assert Counter(trained(outputs)) == Counter(STUDENTS)  # each student trained exactly once
    assert trained(rank0["output"]) and trained(rank1["output"])  # by both ranks
    assert results(run) == results(work / "one")
    assert len(list((run / "csv").glob("version_*"))) == 1  # one logger run (rank 0's)


def test_dead_rank_stops_the_other_in_time_and_the_rerun_completes(jobs):
    work, done = jobs
    survivor, victim = done["killed"]
    run = work / "killed"
    assert victim["rc"] == -9  # killed once its student's first checkpoint was on disk
    assert survivor["rc"] == 2, survivor["output"][-3000:]
    lines = error_lines(survivor["output"])
    assert len(lines) == 1 and "Traceback" not in survivor["output"], survivor["output"][-3000:]
    assert "rank 1 of 2" in lines[0] and "student/rep0" in lines[0] and "cluster.timeout_s" in lines[0]
    assert survivor["after_kill"] < TIMEOUT_S + 15  # the timeout, plus its own students left
    # the rerun (one process) resumes the killed student from its checkpoint, trains only what
    # is missing, and ends with the uninterrupted run's numbers
    (rerun,) = done["rerun"]
    assert rerun["rc"] == 0, rerun["output"][-3000:]
    assert "student/rep0: resuming from" in rerun["output"]
    before = trained(survivor["output"])
    assert before and not set(trained(rerun["output"])) & set(before)  # recorded: not trained again
    assert set(trained(rerun["output"])) | set(before) == set(STUDENTS)
    assert results(run) == results(work / "one")


def test_trainer_ddp_trains_one_student_over_two_gloo_processes(jobs):
    work, done = jobs
    (plain,) = done["ddp_plain"]  # no launcher: one line that says how to launch, nothing run
    assert plain["rc"] == 2 and len(error_lines(plain["output"])) == 1, plain["output"][-3000:]
    assert "torchrun --standalone --nproc_per_node=2 run.py" in plain["output"]
    assert not (work / "plain").exists()
    rank0, rank1 = done["ddp"]
    assert rank0["rc"] == 0 and rank1["rc"] == 0, (rank0["output"][-3000:], rank1["output"][-3000:])
    assert "student/rep0: one student over 2 processes" in rank0["output"]  # DDP, no re-launch
    assert trained(rank0["output"]) == trained(rank1["output"]) == ["student/rep0"]  # one, together
    metrics = json.loads((work / "ddp" / "metrics.json").read_text())
    assert metrics["student/repeats"] == 1 and metrics["student/epochs"] == 24
    assert_students_scored(metrics, 450)  # digits: 450 test images


# -- in one process ---------------------------------------------------------------------------------
class Killed(BaseException):
    """The process dying (not an error Lightning could handle)."""


def test_student_killed_mid_training_resumes_equal(tmp_path):
    import lightning.pytorch as pl
    import torch

    from ddcore.data.small import digits
    from ddcore.distilled import random_real_subset
    from eval.batches import TrainSet
    from eval.hard_label import HardLabelProtocol
    from eval.students import ConvNet

    class KillAfter(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch + 1 == 7:
                raise Killed

    data = digits()
    subset = random_real_subset(data, 2, 0)
    train = TrainSet.from_images(subset.images, subset.labels)
    factory = functools.partial(pl.Trainer, accelerator="cpu", devices=1)

    def student(trainer_factory, checkpoint=None):
        protocol = HardLabelProtocol(
            functools.partial(ConvNet, width=8), epochs=12, evals=4, checkpoint_every=3
        )
        return protocol.train_one(train, data, 12, 5, trainer_factory, None, "s", checkpoint)

    uninterrupted = student(factory)
    checkpoint = tmp_path / "s.ckpt"

    def killed_after_epoch_7(**settings):
        return factory(**{**settings, "callbacks": [*settings["callbacks"], KillAfter()]})

    with pytest.raises(Killed):
        student(killed_after_epoch_7, checkpoint)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 5  # saved after epoch 6 of 12
    assert student(factory, checkpoint) == uninterrupted  # same accuracies and test history


def test_missing_classes_of_a_silent_rank_stop_the_wait(tmp_path):
    from ddcore.data.small import digits
    from ddcore.distributed import Shard, team
    from ddcore.errors import UserError
    from ddcore.sharding import wait_for_classes

    shard = Shard(0, 2)
    start = time.time()
    with team(tmp_path / ".ranks", 0.5, shard), pytest.raises(UserError) as error:
        wait_for_classes(tmp_path / "distilled", digits(), {"x": 1}, shard, poll_s=0.05)
    assert time.time() - start < 3
    assert "rank 1 of 2" in str(error.value) and "classes 1, 3, 5, 7, 9" in str(error.value)


def test_each_rank_trains_on_its_own_gpu(monkeypatch):
    import lightning.pytorch as pl
    import torch

    from ddapp.devices import rank_trainer
    from ddcore.distributed import Shard

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    gpu = functools.partial(pl.Trainer, accelerator="gpu", devices=1)
    assert rank_trainer(gpu, Shard(5, 8, 1)).keywords["devices"] == [1]
    assert rank_trainer(gpu, Shard()) is gpu  # one process: as configured
    ddp = functools.partial(pl.Trainer, accelerator="gpu", devices=-1, strategy="ddp")
    assert rank_trainer(ddp, Shard(1, 2, 1)) is ddp  # DDP: Lightning places the ranks


def test_trainer_ddp_keeps_the_set_on_each_rank_and_counts_the_nodes(make_cfg, monkeypatch):
    """DDP broadcasts a module's buffers from rank 0 at every step: the set is none of the
    student's buffers (BatchNorm statistics still are). Each student's Trainer gets a strategy
    of its own, and num_nodes follows the launcher."""
    import torch

    from eval.batches import TrainSet
    from eval.student_module import StudentModule
    from eval.students import ConvNet

    bank = TrainSet(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), torch.arange(6) % 2)
    student = torch.nn.Sequential(ConvNet(1, 2, 8, width=4), torch.nn.BatchNorm1d(2))
    module = StudentModule(student, 2, 1, {}, None, train=bank)
    buffers = [name for name, _ in module.named_buffers()]
    assert buffers and all("bank" not in name for name in buffers)  # BatchNorm's, not the set
    assert module.bank is bank.images
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy

    from ddapp.devices import check_launch, is_ddp

    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR", "SLURM_JOB_NUM_NODES"):
        monkeypatch.delenv(var, raising=False)
    cfg = make_cfg(*DDP[:1], "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true")
    check_launch(cfg)  # one device: no launcher needed
    assert is_ddp(cfg.trainer)
    factory = instantiate(cfg.trainer)
    trainers = [factory(logger=False, enable_progress_bar=False) for _ in range(2)]  # two students
    for trainer in trainers:
        assert isinstance(trainer.strategy, DDPStrategy)
        assert trainer.num_nodes == 1
    assert trainers[0].strategy is not trainers[1].strategy
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nnodes=2 --nproc_per_node=4
    assert make_cfg("trainer=ddp").trainer.num_nodes == 2
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # a task of hydra/launcher=slurm, nodes=3
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    assert make_cfg("trainer=ddp", "hydra/launcher=slurm", "hydra.launcher.nodes=3").trainer.num_nodes == 3
