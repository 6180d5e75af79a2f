"""`make reference-smoke`: the reference experiment's code path on a tiny subset produces the
report, and a rerun redoes no finished job."""

import json
import math
import statistics
from pathlib import Path

import pytest

from experiments.reference import main
from experiments.reference_plan import ROOT


def test_smoke_writes_the_report_and_a_rerun_skips_finished_jobs(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("DD_CACHE_DIR", str(cache_dir))  # the session's tiny generator
    args = ["--smoke", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert main([*args, "--workers", "2"]) == 0  # two jobs at a time, each in its own process
    first = capsys.readouterr().out
    report = (tmp_path / "out" / "reference.md").read_text()
    assert "| random real |" in report and "### Claims" in report and "t_SG = 50 (= unguided" in report
    assert "Jobs: 14 of 14 finished" in report and "(n=2)" in report  # 2 set seeds a cell
    assert (tmp_path / "out" / "figures" / "digits_tsg.png").is_file()
    # 2 sweep points on the validation split; 2 rows x 2 seeds x 2 protocols; MGD^3 at the
    # sweeps' best (t_SG 50: unguided sampling) is the unguided jobs: run once
    assert first.count("done in") == 10 and "failed" not in first
    sweep = json.loads((tmp_path / "runs" / "digits" / "sweep" / "tsg0" / "job.json").read_text())
    assert "score_on=validation" in sweep["overrides"]
    # a soft-label job starts after the hard-label job whose set it evaluates has finished
    order = first.splitlines()
    start = next(
        i for i, line in enumerate(order) if "digits/soft_label/ipc2/unguided/seed1 (started)" in line
    )
    assert any(line.startswith("  digits/hard_label/ipc2/unguided/seed1 done in") for line in order[:start])
    assert main(args) == 0
    assert "done in" not in capsys.readouterr().out  # finished jobs are not redone


def test_a_setting_the_dataset_cannot_take_is_recorded_once_and_reported_as_na(tmp_path):
    """A job that stops with a one-line error (say more 2x2-tile patches than a digits class has
    images) is finished for a rerun and shows as n/a in the tables, with the reason."""
    from experiments.reference_plan import Job
    from experiments.reference_report import load, method_table

    job = Job("digits/hard_label/ipc50/patch_selection__2x2_tiles/seed0", ["method=patchsel", "ipc=50"])
    folder = job.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"overrides": job.overrides, "error": "ipc=50 needs 200"}))
    assert job.finished(tmp_path)
    assert not Job(job.name, ["method=patchsel", "ipc=10"]).finished(tmp_path)  # other overrides
    table = method_table(
        load(tmp_path), "digits", "hard_label", [50], ["patch selection (2x2 tiles)"], (0, 1)
    )
    assert table[-1] == "| patch selection (2x2 tiles) | n/a | n/a |"


@pytest.mark.parametrize("error, recorded", [("UserError", True), ("StorageError", False)])
def test_only_a_setting_the_dataset_cannot_take_is_recorded_not_a_full_disk(
    tmp_path, monkeypatch, error, recorded
):
    """A full disk or an unreadable cache (``StorageError``) fails the job, so a rerun retries it;
    it is not recorded as a setting the dataset cannot take."""
    import ddapp.jobs
    from ddcore import errors
    from experiments.reference import run_job
    from experiments.reference_plan import Job

    def task(cfg):
        raise getattr(errors, error)("cannot write it (free space there)")

    monkeypatch.setattr(ddapp.jobs, "build", lambda node: task)
    job = Job("digits/hard_label/ipc1/random_real/seed0", ["dataset=digits", "method=random", "ipc=1"])
    if recorded:
        run_job(job, tmp_path)
    else:
        with pytest.raises(errors.StorageError):
            run_job(job, tmp_path)
    assert job.finished(tmp_path) is recorded


def test_a_record_made_with_another_composed_config_is_not_finished(tmp_path):
    """A schedule changed in conf/experiment/reference.yaml keeps every job's overrides: the
    record's config digest tells the old result from the new plan's, wherever the clone lies."""
    from experiments.reference import config_key, resolve_jobs
    from experiments.reference_plan import Job

    overrides = ["dataset=digits", "experiment=reference", "method=random", "ipc=2"]
    job = resolve_jobs([Job("digits/hard_label/ipc2/random_real", overrides)], tmp_path, {}, {})[0]
    assert job.config == config_key(overrides)  # the same digest from any folder
    folder = job.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    record = {"overrides": overrides, "config": job.config}
    (folder / "job.json").write_text(json.dumps(record))
    assert job.finished(tmp_path)
    other = config_key([*overrides, "eval.evals=3"])  # as if reference.yaml had changed
    assert other != job.config
    (folder / "job.json").write_text(json.dumps({**record, "config": other}))
    assert not job.finished(tmp_path)
    (folder / "job.json").write_text(json.dumps({"overrides": overrides}))  # recorded before digests
    assert not job.finished(tmp_path)


def test_a_fresh_clone_resumes_from_the_records_and_redistils_a_missing_source_set(
    tmp_path, cache_dir, monkeypatch, capsys
):
    """The committed runs folder holds records, not sets: a rerun in another folder (a fresh
    clone) finds every job finished, and a soft-label job whose hard-label set is gone gets
    that set distilled again first, with the same numbers: the hard-label job's record stays as
    it was, and the re-run's time is the soft-label job's ``source_seconds``."""
    import shutil

    monkeypatch.setenv("DD_CACHE_DIR", str(cache_dir))
    first, moved = tmp_path / "a" / "runs", tmp_path / "b" / "runs"
    assert main(["--smoke", "--runs", str(first), "--out", str(tmp_path / "out")]) == 0
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    capsys.readouterr()
    assert main(["--smoke", "--runs", str(moved), "--out", str(tmp_path / "out")]) == 0
    assert "done in" not in capsys.readouterr().out  # found finished although the folder moved
    soft = moved / "digits" / "soft_label" / "ipc2" / "unguided" / "seed0"
    before = json.loads((soft / "metrics.json").read_text())
    for folder in moved.rglob("distilled"):
        shutil.rmtree(folder)
    (soft / "metrics.json").unlink()
    hard = moved / "digits" / "hard_label" / "ipc2" / "unguided" / "seed0"
    records = {n: (hard / n).read_bytes() for n in ("job.json", "metrics.json")}
    import torch  # the worker process gets this process's thread count: the same numbers

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    assert main(["--smoke", "--runs", str(moved), "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("done in") == 1 and "failed" not in out
    assert "distilling digits/hard_label/ipc2/unguided/seed0 again" in (soft / "job.log").read_text()
    after = json.loads((soft / "metrics.json").read_text())
    assert after["student/final_acc_runs"] == before["student/final_acc_runs"]
    assert {n: (hard / n).read_bytes() for n in records} == records
    assert json.loads((soft / "job.json").read_text())["source_seconds"] > 0


def test_wall_time_counts_overlapping_jobs_once():
    """Jobs run by two workers overlap; jobs recorded without end times ran one at a time."""
    from experiments.reference_report import wall_time

    jobs = {
        "a": {"seconds": 3600.0, "ended": 10000.0},  # 6400 .. 10000
        "b": {"seconds": 1800.0, "ended": 9000.0},  # inside a
        "c": {"seconds": 1800.0, "ended": 13600.0},  # 11800 .. 13600, after a gap
        "d": {"seconds": 360.0, "ended": None},  # an earlier sequential run
        "e": {"seconds": 0.0, "ended": 9000.0, "same_as": "b"},
    }
    assert wall_time(jobs).startswith("wall time 1.60 h (3 jobs")


def test_hlr_students_of_a_soft_label_job_are_the_hard_label_jobs_students():
    """DD-Ranking's HLR trains hard-label students on the set: in the plan they use the hard-label
    table's protocol exactly (same cache key), so they are read back, not trained again."""
    from hydra.utils import instantiate

    from experiments.reference import compose
    from experiments.reference_plan import plan, table_jobs

    jobs = {j.name: j for j in table_jobs("fashion_mnist", plan(False), ["method.t_sg=25"])}
    hard = jobs["fashion_mnist/hard_label/ipc10/unguided/seed0"].overrides
    soft = [o for o in jobs["fashion_mnist/soft_label/ipc10/unguided/seed0"].overrides if "@set:" not in o]
    described = [instantiate(compose(o, Path("/job")).eval) for o in (hard, soft)]
    assert described[1].hard_label_protocol().describe() == described[0].describe()


def test_a_record_from_an_earlier_plan_is_named_stale_in_the_report(tmp_path, cache_dir, monkeypatch):
    """After the plan changes, a finished job whose recorded overrides differ keeps its row, the
    report's header names it, and the next run redoes it."""
    monkeypatch.setenv("DD_CACHE_DIR", str(cache_dir))
    runs, out = tmp_path / "runs", tmp_path / "out"
    folder = runs / "digits" / "sweep" / "tsg0"
    folder.mkdir(parents=True)
    metrics = {"student/final_acc_mean": 0.5, "student/final_acc_std": 0.0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "job.json").write_text(json.dumps({"overrides": ["dataset=digits", "an=older_plan"]}))
    assert main(["--smoke", "--report", "--runs", str(runs), "--out", str(out)]) == 0
    report = (out / "reference.md").read_text()
    assert "**1 finished jobs ran with other settings than the plan now gives**" in report
    assert "`digits/sweep/tsg0` (0 s, stale)" in report


def test_one_patch_selection_job_per_generator_scores_while_the_others_wait():
    """Every patch-selection job of a generator reads one score cache: a second one started
    beside the first would score every train image again, so it waits until the first is done;
    the other generator's job (its own cache) and the other jobs of a warm group may run."""
    from experiments.reference import can_start
    from experiments.reference_plan import ablation_jobs, plan, table_jobs

    p = plan(False, extended=True)
    jobs = {
        j.name: j
        for j in table_jobs("fashion_mnist", p, ["method.t_sg=25"]) + ablation_jobs("fashion_mnist", p)
    }
    single = jobs["fashion_mnist/hard_label/ipc10/patch_selection__single/seed0"]
    tiles = jobs["fashion_mnist/hard_label/ipc1/patch_selection__2x2_tiles/seed0"]
    ablation = jobs["fashion_mnist/patchsel/no_clustering__all_images/seed0"]  # soft labels, same scores
    latent = jobs["fashion_mnist/hard_label/ipc10/patch_selection__single___latent/seed0"]
    unguided = jobs["fashion_mnist/hard_label/ipc10/unguided/seed0"]
    warm = {g for j in (unguided, jobs["fashion_mnist/soft_label/ipc10/unguided/seed0"]) for g in _groups(j)}
    assert not can_start(tiles, [], [single], warm)
    assert not can_start(ablation, [], [single], warm)
    assert can_start(
        latent,
        [],
        [single],
        warm | set(_groups(jobs["fashion_mnist/hard_label/ipc10/unguided__latent/seed0"])),
    )
    assert can_start(jobs["fashion_mnist/hard_label/ipc1/d4m/seed0"], [], [single], warm)
    assert can_start(tiles, [], [], warm) and can_start(tiles, [], [single], warm | set(_groups(single)))


def _groups(job):
    from experiments.reference import cache_groups

    return cache_groups(job)


def test_soft_label_jobs_evaluated_with_another_teacher_build_are_named():
    """A cache rebuilt on another machine trains the teacher again under the same key; rows of
    one dataset evaluated with different builds are named in the report, the fewer ones first."""
    from experiments.reference_report import teacher_check

    def job(acc):
        return {"metrics": {"teacher/test_acc": acc}}

    jobs = {
        "digits/soft_label/ipc1/a": job(0.98),
        "fashion_mnist/soft_label/ipc1/a": job(0.8941),
        "fashion_mnist/soft_label/ipc1/b": job(0.8941),
        "fashion_mnist/soft_label/ipc1/c": job(0.8966),
        "fashion_mnist/hard_label/ipc1/c": {"metrics": {}},
        "fashion_mnist/sweep/x": {**job(0.8966), "same_as": "fashion_mnist/soft_label/ipc1/c"},
    }
    assert teacher_check(jobs, ["digits"]) == []
    (line,) = teacher_check(jobs, ["digits", "fashion_mnist"])
    assert "2 teacher builds" in line and "89.41% in 2, 89.66% in 1" in line
    assert "`fashion_mnist/soft_label/ipc1/c` used another teacher" in line


def test_the_pixel_and_latent_rows_first_jobs_do_not_both_train_the_full_data_reference():
    """The full-data reference depends on the dataset and protocol, not the generator: with a
    cold cache the first latent job waits for the first pixel job of its protocol, a soft-label
    job waits for the hard-label reference it reads (HLR), and once warm they run side by side."""
    from experiments.reference import can_start
    from experiments.reference_plan import plan, table_jobs

    jobs = {j.name: j for j in table_jobs("fashion_mnist", plan(False, extended=True), ["method.t_sg=25"])}
    pixel = jobs["fashion_mnist/hard_label/ipc10/unguided/seed0"]
    latent = jobs["fashion_mnist/hard_label/ipc10/unguided__latent/seed0"]
    soft = jobs["fashion_mnist/soft_label/ipc10/d4m__latent/seed0"]
    assert not can_start(latent, [], [pixel], set())
    assert not can_start(soft, [], [pixel], set())
    warm = set(_groups(pixel))
    assert not can_start(latent, [], [pixel], warm - {_groups(latent)[0]})
    assert can_start(latent, [], [pixel], warm | {_groups(latent)[1]})


def test_a_job_that_builds_a_shared_cache_starts_before_the_ones_that_only_read():
    """Patch selection's first job scores every train image; started last, the whole run waits
    for it at the end. Of the jobs ready to start, one with a cold cache group goes first."""
    from experiments.reference import first_to_start
    from experiments.reference_plan import plan, table_jobs

    jobs = {j.name: j for j in table_jobs("fashion_mnist", plan(False), ["method.t_sg=25"])}
    d4m = jobs["fashion_mnist/soft_label/ipc50/d4m/seed0"]
    patchsel = jobs["fashion_mnist/soft_label/ipc1/patch_selection__single/seed0"]
    warm = set(_groups(d4m))
    assert first_to_start([d4m, patchsel], warm) is patchsel
    assert first_to_start([d4m, patchsel], warm | set(_groups(patchsel))) is d4m
    assert first_to_start([], warm) is None
    # of two jobs that build caches, the one that scores every train image goes first
    teacher = jobs["fashion_mnist/soft_label/ipc1/random_real/seed0"]
    assert first_to_start([teacher, patchsel], set()) is patchsel
    assert first_to_start([teacher, d4m], set(_groups(d4m))) is teacher


def test_a_job_that_fails_in_a_worker_is_reported_and_a_rerun_resumes_it(tmp_path, capsys):
    """A worker forks a process per job: a job that raises gets its traceback in its job.log and
    a non-zero exit; the driver says which failed and starts no new job; no record is written,
    so a rerun does it again."""
    from experiments.reference import run_parallel
    from experiments.reference_plan import Job

    bad = Job("digits/hard_label/ipc1/broken", ["dataset=digits", "no_such_key=1"])
    assert not run_parallel([bad], tmp_path, 1, 1, {bad.name: bad}, 2, set())
    out = capsys.readouterr().out
    assert f"{bad.name} failed (exit 1)" in out and "1 job(s) failed" in out
    assert "no_such_key" in (bad.folder(tmp_path) / "job.log").read_text()
    assert not bad.finished(tmp_path)


def test_a_source_rerun_stopped_part_way_is_done_again_and_keeps_the_first_record(
    tmp_path, cache_dir, monkeypatch, capsys
):
    """A re-distillation killed after its set was written leaves a set its record did not
    measure (and maybe a record of its own): the marker it left makes the next run distil again,
    and the record kept is the one from before the stopped re-run."""
    import torch

    monkeypatch.setenv("DD_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    runs = tmp_path / "runs"
    args = ["--smoke", "--runs", str(runs), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    hard = runs / "digits" / "hard_label" / "ipc2" / "unguided" / "seed0"
    soft = runs / "digits" / "soft_label" / "ipc2" / "unguided" / "seed0"
    records = {n: (hard / n).read_text() for n in ("job.json", "metrics.json")}
    (hard / "redistilling.json").write_text(json.dumps(records))  # the stopped re-run's marker
    (hard / "metrics.json").write_text(json.dumps({"student/final_acc_runs": [0.0]}))  # its own
    (soft / "metrics.json").unlink()
    assert (hard / "distilled" / "manifest.json").is_file()
    capsys.readouterr()
    assert main([*args, "--workers", "2"]) == 0
    assert "distilling digits/hard_label/ipc2/unguided/seed0 again" in (soft / "job.log").read_text()
    assert {n: (hard / n).read_text() for n in records} == records
    assert not (hard / "redistilling.json").exists()


def test_latent_rows_run_only_extended():
    """The 2-hour plan has one generator per dataset; ``--extended`` adds the latent generator's
    rows at every IPC of the dataset's tables (the pixel-vs-latent comparison)."""
    from experiments.reference_plan import plan, table_jobs

    def latent_ipcs(p):
        return sorted({j.name.split("/")[2] for j in table_jobs(dataset, p, None) if "latent" in j.name})

    dataset = "fashion_mnist"
    assert latent_ipcs(plan(False)) == []
    assert latent_ipcs(plan(False, extended=True)) == ["ipc1", "ipc10", "ipc50"]
    assert latent_ipcs(plan(True)) == []
    dataset = "digits"  # no IPC 50 tables: 50 images are 37 % of a class
    assert latent_ipcs(plan(False, extended=True)) == ["ipc1", "ipc10"]


def test_the_schedule_replay_runs_a_groups_first_job_alone_then_the_rest_side_by_side(tmp_path):
    """experiments/replay_schedule.py replays the driver's scheduling on recorded job times: the
    first sweep job builds the dataset's caches alone, the next two then share the two workers."""
    from experiments.replay_schedule import replayed_seconds

    for name, seconds in (("tsg0", 100.0), ("tsg10", 50.0), ("tsg20", 40.0)):
        folder = tmp_path / "digits" / "sweep" / name
        folder.mkdir(parents=True)
        overrides = ["dataset=digits", "eval=hard_label", "generator=dit_tiny"]
        record = {"overrides": overrides, "seconds": seconds}
        (folder / "job.json").write_text(json.dumps(record))
    seconds, missing = replayed_seconds(tmp_path, None, 2, 2.0, False)
    assert seconds == 102.0 + 52.0 and missing > 0


def test_the_convergence_jobs_train_the_tables_random_real_set_longer_and_the_report_compares():
    """The schedule check: each table's random real set is evaluated again by students trained
    CHECK_FACTOR x as long (soft labels at SOFT_EPOCHS_FACTOR x the hard-label epochs, HLR's
    students still the hard-label table's); the report sets the two final accuracies side by side."""
    from experiments.reference_plan import CHECK_FACTOR, EPOCHS, SOFT_EPOCHS_FACTOR, convergence_jobs, plan
    from experiments.reference_report import schedule_check

    p = plan(False)
    jobs = {j.name: j for j in convergence_jobs("fashion_mnist", p)}
    soft = jobs["fashion_mnist/convergence/soft_label/ipc10/seed0"].overrides
    assert f"eval.epochs={EPOCHS[10] * SOFT_EPOCHS_FACTOR * CHECK_FACTOR}" in soft
    assert f"+eval.hard_label.epochs={EPOCHS[10]}" in soft
    assert "eval.distilled_dir=@set:fashion_mnist/hard_label/ipc10/random_real/seed0" in soft
    hard = jobs["fashion_mnist/convergence/hard_label/ipc50/seed0"].overrides
    assert f"eval.epochs={EPOCHS[50] * CHECK_FACTOR}" in hard and "task=evaluate" in hard

    def record(final, best=None):
        m = {"student/final_acc_mean": final, "student/best_acc_mean": best or final}
        return {"metrics": {**m, "student/final_acc_std": 0.0, "student/best_acc_std": 0.0}}

    done = {
        f"{cell}/seed{s}": record(value + s / 100, best and best + s / 100)
        for cell, value, best in (
            ("fashion_mnist/soft_label/ipc10/random_real", 0.60, None),
            ("fashion_mnist/soft_label/ipc10/unguided", 0.55, 0.58),
            ("fashion_mnist/convergence/soft_label/ipc10", 0.72, None),
        )
        for s in p["seeds"]
    }
    row = next(line for line in schedule_check(done, p) if line.startswith("| fashion_mnist | soft"))
    # the check's seed 0 against the table's seed 0; the gap of final to best over the 3 seeds
    assert "| 60.0 -> 72.0 (+12.0); worst -3.0 (unguided) |" in row
    assert row.startswith("| fashion_mnist | soft labels | - |")


def test_compare_reference_counts_identical_within_and_outside_std_rows(tmp_path, capsys):
    """experiments/compare_reference.py pairs the jobs two runs finished with one config digest."""
    from experiments.compare_reference import main as compare_main

    def write(runs, name, config, mean, std):
        folder = runs / name
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"overrides": [], "config": config}))
        m = {"student/final_acc_mean": mean, "student/final_acc_std": std}
        (folder / "metrics.json").write_text(json.dumps(m))

    a, b = tmp_path / "a", tmp_path / "b"
    for runs, shift in ((a, 0.0), (b, 1.0)):
        write(runs, "d/same", "c1", 0.9, 0.01)
        write(runs, "d/close", "c2", 0.9 + 0.005 * shift, 0.01)
        write(runs, "d/far", "c3", 0.9 + 0.05 * shift, 0.01)
        write(runs, "d/changed", "c4" if shift else "c5", 0.9, 0.01)
    write(a, "d/only_a", "c6", 0.9, 0.01)
    assert compare_main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 jobs in both: 1 identical, 1 within std, 1 outside std, 1 other config")
    assert "d/far: 90.00 ± 1.00 vs 95.00 ± 1.00 (+5.00)" in out
    assert compare_main([str(a), str(tmp_path / "missing")]) == 2


def test_every_claim_follows_from_its_paired_differences_by_the_stated_rule():
    """A claim's verdict is recomputed from its per-seed values: differences a - b, the t
    interval with n - 1 degrees of freedom (4.303 at n = 3), held / contradicted / not resolved;
    the same check runs over the committed report's claims when there is one."""
    from experiments.paired import t_interval
    from experiments.reference_report import compare

    held = compare("a beats b", {0: 80.0, 1: 82.0, 2: 81.0}, {0: 70.0, 1: 71.0, 2: 71.5})
    assert held["diffs"] == [10.0, 11.0, 9.5] and held["verdict"] == "held"
    half = 4.302652729911275 * statistics.stdev(held["diffs"]) / math.sqrt(3)
    assert held["ci"] == pytest.approx([held["mean"] - half, held["mean"] + half])
    assert compare("x", {0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.1, 2: 3.9})["verdict"] == "contradicted"
    assert compare("x", {0: 1.0, 1: 5.0}, {0: 2.0, 1: 3.0})["verdict"] == "not resolved"
    assert compare("x", {0: 1.0, 5: 2.0}, {1: 2.0})["verdict"] == "not run"  # no seed in common
    assert compare("x", {0: 1.0}, {0: 0.0})["verdict"] == "not resolved"  # n = 1: no interval

    report = ROOT / "results" / "reference.json"
    found = json.loads(report.read_text())["claims"] if report.is_file() else {}
    for claim in (c for claims in found.values() for c in claims):
        assert claim["diffs"] == pytest.approx([a - b for a, b in zip(claim["a"], claim["b"])])
        ci = t_interval(claim["diffs"])
        expected = "not run" if not claim["diffs"] else "not resolved" if ci is None else None
        expected = expected or ("held" if ci[0] > 0 else "contradicted" if ci[1] < 0 else "not resolved")
        assert claim["verdict"] == expected, claim["claim"]


def test_a_row_whose_sets_equal_an_earlier_rows_at_every_seed_is_shown_once():
    """k-means real and herding pick the same image at IPC 1: the table says so instead of
    repeating the numbers (the sets' digests are in each job's metrics)."""
    from experiments.reference_report import method_table

    def job(digest, value):
        return {
            "metrics": {"set/digest": digest, "student/final_acc_mean": value, "student/best_acc_mean": value}
        }

    jobs = {}
    for s in (0, 1):
        jobs[f"d/hard_label/ipc1/herding/seed{s}"] = job(f"h{s}", 0.5)
        jobs[f"d/hard_label/ipc1/k_means_real/seed{s}"] = job(f"h{s}", 0.5)
        jobs[f"d/hard_label/ipc1/unguided/seed{s}"] = job("u" if s else "h0", 0.4)  # equal at one seed only
    table = method_table(jobs, "d", "hard_label", [1], ["herding", "k-means real", "unguided"], (0, 1))
    assert table[3] == "| k-means real | = herding (same sets) |  |"
    assert table[2].startswith("| herding | 50.0 ± 0.0 (n=2)") and table[4].startswith("| unguided | 40.0")


def test_the_sweeps_guidance_off_point_is_unguided_sampling():
    """At t_SG = the sampler's step count MGD^3 never guides: the plan runs that point as
    method=unguided, which holds only while mgd3's steps are GUIDANCE_OFF."""
    from experiments.reference import compose
    from experiments.reference_plan import GUIDANCE_OFF, plan, sweep_jobs

    assert compose(["method=mgd3"], Path("/job")).method.steps == GUIDANCE_OFF
    jobs = {j.name: j.overrides for j in sweep_jobs("digits", plan(False))}
    assert "method=unguided" in jobs[f"digits/sweep/tsg{GUIDANCE_OFF}"]
    assert all("score_on=validation" in o and "validation.fraction=0.2" in o for o in jobs.values())


def test_the_validation_split_is_held_out_of_train_by_class_and_seed():
    """score_on=validation: a seeded share of each class's train images becomes the test split;
    the train split keeps the rest; nothing of the real test split is used."""
    import torch

    from ddcore.data.base import hold_out_validation
    from ddcore.data.small import digits
    from ddcore.errors import UserError

    data = digits()
    held = hold_out_validation(data, 0.2, 0)
    n = len(data.train)
    assert len(held.train) + len(held.test) == n and len(held.test) == 269
    counts = torch.bincount(held.test.labels, minlength=10)
    assert counts.min() >= 26 and counts.max() <= 28  # stratified: 0.2 of each class
    rows = {tuple(x.flatten().tolist()) for x in held.train.images} & {
        tuple(x.flatten().tolist()) for x in held.test.images
    }
    assert len(rows) < 5  # disjoint up to duplicate digits in the data itself
    again = hold_out_validation(data, 0.2, 0)
    assert torch.equal(again.test.images, held.test.images)
    assert not torch.equal(hold_out_validation(data, 0.2, 1).test.images, held.test.images)
    with pytest.raises(UserError, match="validation.fraction=1"):
        hold_out_validation(data, 1.0, 0)


def test_the_readme_headline_is_written_from_the_reports_json(tmp_path):
    """The README quotes the report: its headline block is generated from reference.json (cells
    as mean ± std over the seeds, the claims' verdicts, the run's cost) and only that block is
    rewritten."""
    from experiments.reference_report import README_BEGIN, README_END, headline, update_readme

    jobs = {}
    for s, (mgd3, real) in enumerate([(0.90, 0.80), (0.92, 0.81), (0.91, 0.79)]):
        jobs[f"digits/hard_label/ipc10/mgd_3__paper_defaults/seed{s}"] = {"student/final_acc_mean": mgd3}
        jobs[f"digits/hard_label/ipc10/random_real/seed{s}"] = {"student/final_acc_mean": real}
    claim = {"claim": "MGD^3 beats random real", "verdict": "held"}
    summary = {
        "jobs": jobs,
        "seeds": [0, 1, 2],
        "claims": {"digits": [claim, {"claim": "x", "verdict": "not run"}]},
        "finished": 6,
        "planned": 9,
        "job_hours": 0.5,
        "wall": "wall time 0.30 h",
    }
    text = headline(summary)
    assert "- digits, hard labels, IPC 10: MGD^3 (paper defaults) 91.0 ± 1.0; unguided -;" in text
    assert "random real 80.0 ± 1.0." in text
    assert "Of 1 claims tested (3 set seeds, paired 95% t intervals): 1 held, 0 contradicted" in text
    assert "Held: digits: MGD^3 beats random real." in text and "6 of 9 jobs, 0.50 h of job time" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{README_BEGIN}\nold\n{README_END}\n\n## Next\n")
    assert update_readme(readme, summary) and not update_readme(readme, summary)
    assert readme.read_text() == f"# Title\n\n{text}\n\n## Next\n"
