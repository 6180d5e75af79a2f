"""What every student accuracy must be: a whole number of correct test images, the last test
point of its run, and (for a job) the mean of its runs."""

import pytest


def assert_count_of(acc: float, test_images: int) -> None:
    correct = acc * test_images
    assert 0 <= correct <= test_images and correct == pytest.approx(round(correct), abs=1e-3), acc


def assert_students_scored(metrics: dict, test_images: int) -> None:
    runs = metrics["student/final_acc_runs"]
    assert metrics["student/final_acc_mean"] == pytest.approx(sum(runs) / len(runs))
    for final, history in zip(runs, metrics["student/histories"]):
        assert final == history[-1][1]  # the final accuracy is the run's last test point
        assert_count_of(final, test_images)
