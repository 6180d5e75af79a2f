"""`make reference-smoke`: the reference experiment's code path on a tiny subset produces the
report, and a rerun redoes no finished job."""

from experiments.reference import main


def test_smoke_writes_the_report_and_a_rerun_skips_finished_jobs(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("DD_CACHE_DIR", str(cache_dir))  # the session's tiny generator
    args = ["--smoke", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    first = capsys.readouterr().out
    report = (tmp_path / "out" / "reference.md").read_text()
    assert "| random real |" in report and "### Claims" in report and "t_SG = 50" in report
    assert "Jobs: 8 of 8 finished" in report
    assert (tmp_path / "out" / "figures" / "digits_tsg.png").is_file()
    # MGD^3 at the sweep's best (t_SG, lam) under hard labels is that sweep job: run once
    assert first.count("done in") == 7
    assert main(args) == 0
    assert "done in" not in capsys.readouterr().out  # finished jobs are not redone
