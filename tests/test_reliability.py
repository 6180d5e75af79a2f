"""Nothing lost, nothing mixed, nothing silent: every failure of issue 12, tried as a user would.

Each bad input or fault runs ``run.py`` with tiny settings and must give exit status 2, one
``error:`` line on stderr naming the problem, no traceback and no run folder left behind. The
cheap ones (config composition, folders, caches, offline hub) run in one warm interpreter, one
fork per case (``tests/run_many.py``). The integrity cases compare a folder's PNGs with a fresh
run of the settings it claims: a refused resume leaves it as it was, an accepted one finishes it
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["logger=none", "debug=tiny"]


# -- helpers ---------------------------------------------------------------------------------
def run(run_dir: Path, cache: Path, *args, env=None):
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *TINY,
        *args,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache}",
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=run_dir.parent,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_refused(rc: int, stderr: str, *expected: str) -> None:
    lines = error_lines(stderr)
    assert rc == 2, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert all(text in lines[0] for text in expected), lines[0]
    assert "Traceback" not in stderr


def pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob("*/*.png"))}


def record(run_dir: Path) -> dict[str, bytes]:
    """The run's ``.hydra/`` files (the config and overrides a sweep table reads)."""
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").glob("*.yaml"))}


def image_tree(
    root: Path, classes=("a", "b", "c"), per_class: int = 3, value: int = 0, size: int = 16
) -> Path:
    """root/{train,val}/<class>/<i>.png, each image a different gray gradient."""
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                ramp = np.linspace(0, 1, size * size).reshape(size, size)
                pixels = (ramp * 200 + 10 * c + 5 * i + value) % 256
                Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    return root


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` unwritable, also for root (chmod does not stop root; the immutable flag does)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        probe = folder / ".probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("cannot make a folder read-only here")
        except OSError:
            pass
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


# -- finished runs: the references the integrity cases compare with --------------------------------
@pytest.fixture(scope="module")
def fresh(tmp_path_factory, cache_dir):
    """mgd3, ipc 2, the tiny generator (trained once per session into the shared cache)."""
    run_dir = tmp_path_factory.mktemp("fresh") / "run"
    proc = run(run_dir, cache_dir, "task=distill")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, pngs(run_dir / "distilled")


FOLDER_ARGS = ["task=distill", "method=random", "ipc=1", "dataset=image_folder", "dataset.resolution=16"]


@pytest.fixture(scope="module")
def fresh_folder_run(tmp_path_factory, cache_dir):
    """random, ipc 1, from an image folder A (classes a, b, c)."""
    work = tmp_path_factory.mktemp("folder_run")
    root = image_tree(work / "A")
    proc = run(work / "run", cache_dir, *FOLDER_ARGS, f"dataset.root={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "run", root, pngs(work / "run" / "distilled")


def interrupted_copy(run_dir: Path, into: Path, keep: int = 4) -> Path:
    """The finished run as a run killed after ``keep`` classes leaves it."""
    shutil.copytree(run_dir, into)
    distilled = into / "distilled"
    (distilled / "manifest.json").unlink()
    for label in range(keep, 10):
        (distilled / ".done" / f"{label}.json").unlink()
        shutil.rmtree(distilled / str(label))
    return into


def held_stamp(run_dir: Path, **changes) -> dict:
    """The settings a writer of the finished run holds its folder with (``changes`` applied)."""
    marker = json.loads((run_dir / "distilled" / ".done" / "0.json").read_text())
    return {**marker["fingerprint"], **changes}


def rewrite_in_place(image: Path) -> None:
    """Other pixels, same name; the mtime moves on even on a coarse-clock file system."""
    Image.fromarray(np.full((16, 16), 7, np.uint8)).convert("RGB").save(image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))


# -- the failures: one warm interpreter, one fork per case -----------------------------------------
@pytest.fixture(scope="module")
def failures(tmp_path_factory, cache_dir, fresh, fresh_folder_run):
    from ddcore import folder_lock
    from ddcore.sharding import differences

    work = tmp_path_factory.mktemp("failures")
    cases, before = {}, {}

    def case(name, *args, env=None, unset=(), cache=cache_dir, run_dir=None):
        run_dir = run_dir or work / "runs" / name
        cases[name] = {
            "argv": [*TINY, *args, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"],
            "env": env or {},
            "unset": list(unset),
            "cwd": str(work),
            "run_dir": str(run_dir),
        }
        if (run_dir / "distilled").is_dir():
            before[name] = (pngs(run_dir / "distilled"), record(run_dir))

    # config composition and settings
    case("misspelt_key", "method.lamm=0.1")
    case("wrong_type", "method.t_sg=abc")
    case("unknown_nested_option", "eval/student=foo")
    case("missing_mandatory", "dataset=image_folder")
    case("epochs_0", "eval.epochs=0")
    case("repeats_0", "eval.repeats=0")
    case("report_space", "report.space=foo")
    case("sample_precision", "sample_precision=foo")
    case("cfg_scale_negative", "method.cfg_scale=-5")
    case("generator_cfg_scale", "generator.cfg_scale=-1")
    case("lam_nan", "method.lam=nan")
    case("lam_inf", "method.lam=inf")
    case("trainer_precision", "trainer.precision=foo")
    # the run folder and the cache
    (work / "a_file").write_text("not a folder")
    case("run_dir_not_a_directory", "task=distill", run_dir=work / "a_file" / "run")
    case("cache_not_a_directory", "task=distill", cache=work / "a_file")
    # a corrupt cached generator (a copy of the shared cache, its weights truncated)
    broken = work / "broken_cache"
    shutil.copytree(cache_dir / "generators", broken / "generators")
    for weights in broken.glob("generators/*/denoiser/*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    case("corrupt_generator", "task=distill", cache=broken)
    # offline: the hub's endpoint refuses connections, HF_HUB_OFFLINE unset
    case(
        "offline_hub",
        "task=distill",
        "generator=dit_xl2",
        "generator.class_space=dataset",
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        unset=["HF_HUB_OFFLINE"],
    )
    # test data: an unreadable file, a class without test images
    unreadable = image_tree(work / "unreadable")
    (unreadable / "val" / "b" / "1.png").write_bytes(b"\x89PNG broken")
    case(
        "unreadable_test_image",
        "method=random",
        "ipc=1",
        "dataset=image_folder",
        f"dataset.root={unreadable}",
        "dataset.resolution=16",
    )
    no_test = image_tree(work / "no_test")
    shutil.rmtree(no_test / "val" / "c")
    case(  # decoded in a DataLoader worker: the worker's traceback is not the message
        "unreadable_test_image_in_worker",
        "method=random",
        "ipc=1",
        "dataset=image_folder",
        f"dataset.root={unreadable}",
        "dataset.resolution=16",
        "eval.num_workers=1",
    )
    case(
        "class_without_test_images",
        "method=random",
        "ipc=1",
        "dataset=image_folder",
        f"dataset.root={no_test}",
        "dataset.resolution=16",
    )
    # untrusted inputs (docs/reliability.md): code in data files, image bombs, odd names
    from tests.test_data_folders import WritesMarker, write_pickle
    from tests.test_untrusted_inputs import png_bomb, student_checkpoints

    markers = work / "markers"
    markers.mkdir()
    cifar = work / "cifar"
    cifar.mkdir()
    write_pickle(cifar / "batches.meta", {b"label_names": [WritesMarker(markers / "cifar")]})
    case("crafted_cifar_pickle", "dataset=cifar10", f"dataset.root={cifar}")
    folder_case = ["method=random", "ipc=1", "dataset=image_folder", "dataset.resolution=16"]
    bomb = image_tree(work / "bomb")
    png_bomb(bomb / "val" / "b" / "3.png")  # the test split is read before any work
    case("decompression_bomb", *folder_case, f"dataset.root={bomb}")
    clean = image_tree(work / "clean")
    case("image_over_max_pixels", *folder_case, f"dataset.root={clean}", "dataset.max_pixels=100")
    bad_file = image_tree(work / "bad_file")
    os.rename(bad_file / "train" / "a" / "0.png", os.fsencode(bad_file / "train" / "a") + b"/\xff.png")
    case("non_utf8_file_name", *folder_case, f"dataset.root={bad_file}")
    bad_class = image_tree(work / "bad_class")
    os.rename(bad_class / "train" / "c", os.fsencode(bad_class / "train") + b"/c\xfe")
    case("non_utf8_class_name", *folder_case, f"dataset.root={bad_class}")
    loop = image_tree(work / "loop")
    (loop / "val" / "a" / "loop.png").symlink_to("loop.png")
    case("symlink_loop", *folder_case, f"dataset.root={loop}")
    for name, path in zip(("crafted", "truncated"), student_checkpoints(work, markers / "student")):
        run_dir = work / f"{name}_checkpoint"
        (run_dir / "checkpoints" / "student").mkdir(parents=True)
        path.rename(run_dir / "checkpoints" / "student" / "rep0.ckpt")
        case(f"{name}_student_checkpoint", *folder_case, f"dataset.root={clean}", run_dir=run_dir)
    # messages that named the wrong thing
    case("dataset_resolution_0", "dataset.resolution=0")
    uneven = work / "uneven"
    for label in range(10):
        for i in range(2 if label else 1):
            (uneven / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 20 * label + i, np.uint8)).save(
                uneven / str(label) / f"{i}.png"
            )
    case("evaluate_uneven_classes", "task=evaluate", f"eval.distilled_dir={uneven}")
    # integrity: a resume with another generator setting (killed after 4 classes)
    run_dir, _ = fresh
    case(
        "resume_other_cfg_scale",
        "task=distill",
        "generator.cfg_scale=1.0",
        run_dir=interrupted_copy(run_dir, work / "resumed"),
    )
    # integrity: another writer (this process, with seed 1) holds the folder
    busy = interrupted_copy(run_dir, work / "busy")
    case("second_writer_other_seed", "task=distill", run_dir=busy)
    # integrity: a finished folder, rerun with another root of the same classes, or after an
    # image of its own root was rewritten in place
    folder_run, root_a, _ = fresh_folder_run
    root_b = image_tree(work / "B", value=40)
    case(
        "other_root_same_classes",
        *FOLDER_ARGS,
        f"dataset.root={root_b}",
        run_dir=shutil.copytree(folder_run, work / "other_root"),
    )
    rewrite_in_place(root_a / "train" / "a" / "0.png")  # same names and count
    case(
        "rewritten_in_place",
        *FOLDER_ARGS,
        f"dataset.root={root_a}",
        run_dir=shutil.copytree(folder_run, work / "rewritten"),
    )

    results = {}
    with contextlib.ExitStack() as stack:
        try:  # read-only folders (skipped where even root can write them)
            locked = stack.enter_context(read_only(work / "read_only"))
            case("run_dir_read_only", "task=distill", run_dir=locked / "run")
            case("cache_read_only", "task=distill", cache=locked)
        except pytest.skip.Exception:
            pass
        stack.enter_context(folder_lock.writing(busy / "distilled", held_stamp(run_dir, seed=1), differences))
        spec = work / "cases.json"
        spec.write_text(json.dumps(list(cases.values())))
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "run_many.py"), str(spec)],
            capture_output=True,
            text=True,
            cwd=work,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        for name, result in zip(cases, json.loads(proc.stdout.splitlines()[-1])):
            results[name] = {**result, "run_dir": Path(cases[name]["run_dir"]), "before": before.get(name)}
    return results


FAILURES = {
    "misspelt_key": ["Key 'lamm' not in", "+method.lamm=0.1"],
    "wrong_type": ["method.t_sg=abc", "could not be converted to Integer"],
    "unknown_nested_option": ["Could not find 'eval/student/foo'", "convnet"],
    "missing_mandatory": ["dataset.root is not set", "dataset.root="],
    "epochs_0": ["eval.epochs must be >= 1", "got 0"],
    "repeats_0": ["eval.repeats must be >= 1", "got 0"],
    "report_space": ["report.space must be one of: pixels, latents, tsne", "got 'foo'"],
    "sample_precision": ["sample_precision must be one of", "got 'foo'"],
    "cfg_scale_negative": ["method.cfg_scale must be >= 0", "got -5.0"],
    "generator_cfg_scale": ["generator.cfg_scale must be >= 0", "got -1"],
    "lam_nan": ["method.lam must be >= 0 (a finite number)", "got nan"],
    "lam_inf": ["method.lam must be >= 0 (a finite number)", "got inf"],
    "trainer_precision": ["trainer.precision must be one of", "got 'foo'"],
    "run_dir_not_a_directory": ["Not a directory", "hydra.run.dir"],
    "cache_not_a_directory": ["paths.cache_dir=", "is not a directory"],
    "corrupt_generator": ["cached generator dit_tiny", "generator.retrain=true"],
    "offline_hub": ["facebook/DiT-XL-2-256", "hub is unreachable", "generator.path"],
    "unreadable_test_image": ["cannot read image", "1.png"],
    "unreadable_test_image_in_worker": ["cannot read image", "1.png", "(remove or replace the file)"],
    "class_without_test_images": ["classes have no test images", "'c'"],
    "run_dir_read_only": ["cannot create or write", "hydra.run.dir"],
    "cache_read_only": ["paths.cache_dir=", "cannot be written"],
    "crafted_cifar_pickle": ["batches.meta is not a CIFAR-10 data file", "io.open", "nothing in it was run"],
    "decompression_bomb": [
        "3.png has 900,000,000 pixels, over the limit of 178,956,970",
        "dataset.max_pixels",
    ],
    "image_over_max_pixels": ["has 16x16 = 256 pixels, over the limit of 100", "dataset.max_pixels"],
    "non_utf8_file_name": ["name is not valid UTF-8", "train/a/\\xff.png", "(rename it"],
    "non_utf8_class_name": ["name is not valid UTF-8", "train/c\\xfe", "(rename it"],
    "symlink_loop": ["cannot follow", "val/a/loop.png", "Too many levels of symbolic links"],
    "dataset_resolution_0": ["dataset.resolution must be >= 1", "got 0", "(set dataset.resolution="],
    "evaluate_uneven_classes": [
        "class '0' has 1 images, others 2",
        "task=evaluate takes ipc from the folder",
    ],
}
STUDENT_CHECKPOINTS = {  # <run>/checkpoints/student/rep0.ckpt, where a rerun resumes the student
    "crafted_student_checkpoint": ["objects other than tensors", "nothing in it was run"],
    "truncated_student_checkpoint": ["PytorchStreamReader failed reading zip archive"],
}
REFUSED_RESUMES = {
    "resume_other_cfg_scale": [
        "holds classes made with other settings",
        "generator.cfg_scale: 3.0 there, 1.0 here",
    ],
    "second_writer_other_seed": ["being written by another process", "seed: 1 there, 0 here"],
    "other_root_same_classes": ["holds classes made with other settings", "data."],
    "rewritten_in_place": ["holds classes made with other settings", "data.train_digest"],
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_failure_is_one_line_exit_2_nothing_left(failures, name):
    if name not in failures:
        pytest.skip("read-only folders cannot be made here")
    result = failures[name]
    assert_refused(result["rc"], result["stderr"], *FAILURES[name])
    assert not result["run_dir"].exists()


def test_no_code_in_a_data_file_ran(failures):
    """The crafted CIFAR pickle and student checkpoint would each have created a marker file."""
    assert failures["crafted_cifar_pickle"]["rc"] == 2
    assert not any((failures["crafted_cifar_pickle"]["run_dir"].parent.parent / "markers").iterdir())


@pytest.mark.parametrize("name", list(STUDENT_CHECKPOINTS))
def test_a_bad_student_checkpoint_is_one_line_naming_it(failures, name):
    result = failures[name]
    checkpoint = result["run_dir"] / "checkpoints" / "student" / "rep0.ckpt"
    fix = "(delete it to retrain that student from the start)"
    assert_refused(result["rc"], result["stderr"], str(checkpoint), fix, *STUDENT_CHECKPOINTS[name])
    assert checkpoint.is_file()  # the user's to delete: the folder holds work to resume


def test_offline_hub_fails_at_once(failures):
    assert "Retrying" not in failures["offline_hub"]["stderr"]  # no retries before the line
    assert failures["offline_hub"]["seconds"] < 30  # (machine load included; was ~25 s + start)


@pytest.mark.parametrize("name", list(REFUSED_RESUMES))
def test_a_folder_never_takes_images_of_other_settings(failures, name):
    """Refused in one line, and the folder holds exactly what it held (one setting's images)."""
    result = failures[name]
    assert_refused(result["rc"], result["stderr"], *REFUSED_RESUMES[name])
    images, hydra_record = result["before"]
    assert images and pngs(result["run_dir"] / "distilled") == images
    assert record(result["run_dir"]) == hydra_record  # .hydra/ still says what made the folder


def test_resume_after_only_the_cache_folder_moved_finishes_the_same_set(fresh, cache_dir, tmp_path):
    """Only the cache folder changes, and a writer of the same settings (a rank of the same
    run) holds the folder: the resume joins it and finishes the set an uninterrupted run made."""
    from ddcore import folder_lock
    from ddcore.sharding import differences

    run_dir, expected = fresh
    resumed = interrupted_copy(run_dir, tmp_path / "run", keep=7)
    moved = tmp_path / "moved_cache"
    shutil.copytree(cache_dir / "generators", moved / "generators")
    with folder_lock.writing(resumed / "distilled", held_stamp(run_dir), differences):
        proc = run(resumed, moved, "task=distill")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pngs(resumed / "distilled") == expected  # every class from one setting


def test_dataset_max_pixels_is_declared_where_it_is_read(tmp_path):
    """Every dataset config whose target takes ``max_pixels`` declares it with the code's default
    (PIL's bomb threshold), so ``dataset.max_pixels=N`` is set without a ``+``."""
    import inspect

    import yaml
    from hydra.utils import get_method

    from ddcore.data.base import MAX_PIXELS

    declared = {}
    for path in sorted((ROOT / "conf" / "dataset").glob("*.yaml")):
        conf = yaml.safe_load(path.read_text())
        if "max_pixels" in inspect.signature(get_method(conf["_target_"])).parameters:
            declared[path.stem] = conf.get("max_pixels")
    assert "image_folder" in declared and "tinyimagenet" in declared
    assert set(declared.values()) == {MAX_PIXELS}, declared
    cmd = [sys.executable, str(ROOT / "run.py"), "dataset=image_folder", f"dataset.root={tmp_path}"]
    proc = subprocess.run(
        [*cmd, "dataset.max_pixels=100", "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "  max_pixels: 100\n" in proc.stdout


# -- a refused job keeps what it did not make ------------------------------------------------------
def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tree(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


FINISHED_EVALUATE = {  # what a finished task=evaluate folder holds (no distilled/)
    ".hydra/config.yaml": "task: {name: evaluate}\n",
    ".hydra/hydra.yaml": "hydra: {}\n",
    ".hydra/overrides.yaml": "- task=evaluate\n",
    "run.log": "[...] evaluated\n",
    "metrics.json": '{"student/final_acc_mean": 0.5}',
    "students/student/rep0.json": "{}",
    "checkpoints/student/rep0.ckpt": "weights",
    "figures/grid.png": "png",
}


@pytest.fixture(scope="module")
def refused_in_folders(tmp_path_factory, cache_dir):
    """One config error (method.lam=nan) run into folders of several kinds, each case forked
    from one warm interpreter (tests/run_many.py)."""
    work = tmp_path_factory.mktemp("refused")
    bad = [*TINY, "method.lam=nan", f"paths.cache_dir={cache_dir}"]
    user = write_tree(work / "user", {"notes.txt": "mine", "data/x.bin": "1234"})
    evaluated = write_tree(work / "evaluated", FINISHED_EVALUATE)
    two_runs = write_tree(
        work / "two_runs",
        {f"{run}/{name}": f"{run} {name}" for run in ("a", "b") for name in FINISHED_EVALUATE},
    )
    sweep_job = write_tree(work / "sweep" / "debug=tiny,method.lam=nan", FINISHED_EVALUATE)
    cases = {
        "user_folder": [*bad, f"hydra.run.dir={user}"],
        "finished_evaluate": [
            *bad,
            "task=evaluate",
            f"eval.distilled_dir={work / 'set'}",
            f"hydra.run.dir={evaluated}",
        ],
        "two_runs": [*bad, f"hydra.run.dir={two_runs}"],
        "default_folder": [*bad, f"paths.log_dir={work / 'logs'}"],
        "new_folder": [*bad, f"hydra.run.dir={work / 'new'}"],
        "sweep_existing_job": ["-m", *bad, f"hydra.sweep.dir={work / 'sweep'}"],
        "sweep_new": ["-m", *bad, f"hydra.sweep.dir={work / 'new_sweep'}"],
    }
    before = {"user": tree(user), "evaluated": tree(evaluated), "two_runs": tree(two_runs)}
    before["sweep_job"] = tree(sweep_job)
    spec = work / "cases.json"
    spec.write_text(json.dumps([{"argv": argv, "cwd": str(work)} for argv in cases.values()]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "run_many.py"), str(spec)],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(cases, json.loads(proc.stdout.splitlines()[-1])))
    for result in results.values():
        assert_refused(result["rc"], result["stderr"], "method.lam must be >= 0", "got nan")
    return work, results, before


def test_a_refused_job_leaves_an_existing_folder_as_it_was(refused_in_folders):
    """The user's own folder, a finished task=evaluate folder (students, metrics, checkpoints,
    figures, no distilled/) and a folder of two earlier runs: every file kept byte for byte,
    the ``.hydra/`` record put back, no record or log of the refused job left in them."""
    work, _, before = refused_in_folders
    assert tree(work / "user") == before["user"]  # no .hydra/ or run.log added
    assert tree(work / "two_runs") == before["two_runs"]
    after = tree(work / "evaluated")
    log = after.pop("run.log")
    assert log.startswith(before["evaluated"].pop("run.log"))  # its log: appended to, not lost
    assert after == before["evaluated"]


def test_a_refused_job_removes_the_folder_it_made(refused_in_folders):
    work, _, _ = refused_in_folders
    assert not (work / "new").exists()
    runs = work / "logs" / "runs"  # the default, time-stamped folder
    assert not runs.exists() or not list(runs.iterdir())


def test_a_refused_sweep_job_keeps_an_existing_job_folder(refused_in_folders):
    work, _, before = refused_in_folders
    after, kept = tree(work / "sweep" / "debug=tiny,method.lam=nan"), dict(before["sweep_job"])
    assert after.pop("run.log").startswith(kept.pop("run.log")) and after == kept
    assert not (work / "new_sweep" / "debug=tiny,method.lam=nan").exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_removes_a_folder(tmp_path, monkeypatch, rank):
    """Under torchrun one rank's error must not delete the folder the others write into."""
    from ddapp import cli

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"
    cli.remember_run_folders([f"hydra.run.dir={run_dir}"])  # absent when the job starts
    write_tree(run_dir, {".hydra/config.yaml": "x: 1\n", "rank1.alive": ""})
    assert cli.claim_run_folder(run_dir)  # made by this job (all ranks make it)
    with pytest.raises(SystemExit) as exit_:
        cli.fail("bad setting", run_dir)
    assert exit_.value.code == 2
    assert run_dir.exists() == (rank == 1)


def test_an_error_raised_in_a_data_loader_worker_is_one_line():
    from ddapp.cli import one_line

    message = (
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\nddcore.errors.UserError: cannot read image a.png: '
        "broken (remove or replace the file)\n"
    )
    assert one_line(message) == "cannot read image a.png: broken (remove or replace the file)"
    assert one_line("plain: message") == "plain: message"


# -- inputs read right -----------------------------------------------------------------------------
def gradient_image(mode: str) -> Image.Image:
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    u8 = Image.fromarray((ramp * 255).round().astype(np.uint8))
    if mode == "I;16":
        image = Image.new("I;16", (8, 8))
        image.frombytes((ramp * 65535).round().astype("<u2").tobytes())
        return image
    if mode == "I":
        return Image.fromarray((ramp * 65535).round().astype(np.int32))
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32))
    if mode in ("LA", "RGBA"):
        alpha = Image.fromarray(np.full((8, 8), 128, np.uint8))
        return Image.merge(mode, [u8] * (len(mode) - 1) + [alpha])
    return u8.convert(mode)  # L, P, 1, CMYK


MODES = ["L", "LA", "P", "RGBA", "I;16", "I", "F", "1", "CMYK"]


@pytest.mark.parametrize("channels", [1, 3])
def test_every_pil_mode_reads_to_the_unit_range(tmp_path, channels):
    from ddcore.data.folders import image_folder

    for split in ("train", "val"):
        for mode in MODES:
            folder = tmp_path / split / mode.replace(";", "_")
            folder.mkdir(parents=True)
            gradient_image(mode).save(folder / "x.tiff")
    data = image_folder(str(tmp_path), resolution=8, channels=channels)
    images = data.train.load(range(len(data.train)))
    assert images.shape == (len(MODES), channels, 8, 8)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    means = dict(zip(data.class_ids, images.mean(dim=(1, 2, 3)).tolist()))
    for class_id, mean in means.items():  # a 0..1 ramp averages 0.5 (binary "1": 0.53)
        assert abs(mean - 0.5) < 0.04, (class_id, mean)


def test_caches_change_when_an_image_is_rewritten_in_place(tmp_path):
    from ddcore.data.folders import image_folder
    from ddcore.data.identity import data_identity
    from eval.reference import data_key
    from patchsel.score_cache import class_images_identity

    root = image_tree(tmp_path / "data")
    data = image_folder(str(root), resolution=16)
    before = (class_images_identity(data, 0), data_key(data), data_identity(data))
    rewrite_in_place(root / "train" / "a" / "0.png")
    data = image_folder(str(root), resolution=16)  # same names, same count
    after = (class_images_identity(data, 0), data_key(data), data_identity(data))
    assert all(b != a for b, a in zip(before, after))


def test_degenerate_data_is_reported_in_one_line(cache_dir, tmp_path):
    """One image per class, all of them constant: set metrics and figures are made, one line."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(root / split / name / "0.png")
    run_dir = tmp_path / "run"
    proc = run(
        run_dir,
        cache_dir,
        "task=distill",
        "method=random",
        "ipc=1",
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.resolution=16",
        "report.tsne_classes=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    log = (run_dir / "run.log").read_text() if (run_dir / "run.log").is_file() else proc.stdout
    assert len([line for line in log.splitlines() if "degenerate data:" in line]) == 1
    assert {"grid.png", "scatter.png", "tsne.png"} <= {p.name for p in (run_dir / "figures").iterdir()}
    assert json.loads((run_dir / "metrics.json").read_text())["set/degenerate_classes"] == 3
