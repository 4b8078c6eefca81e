"""malpi.workers: the same jobs, here or on Ray, give the same results in the same order."""

import sys

import pytest

from malpi.workers import Workers


def square_plus(shared, job):
    return shared + job * job


def fail_on_three(shared, job):
    if job == 3:
        raise ValueError(f"job {job} is bad")
    return job


def test_local_runs_in_order_without_importing_ray():
    was_imported = "ray" in sys.modules
    results = list(Workers().map(square_plus, range(5), shared=10))
    assert results == [10, 11, 14, 19, 26]
    assert Workers().count == 1 and not Workers().on_ray
    if not was_imported:
        assert "ray" not in sys.modules


def test_ray_gives_the_local_results_in_order(local_ray):
    workers = Workers("auto")
    assert workers.on_ray and workers.count == 2
    jobs = list(range(20))
    assert list(workers.map(square_plus, jobs, shared=10, in_flight=3)) == list(
        Workers().map(square_plus, jobs, shared=10)
    )


def test_a_failing_job_raises_its_error_on_ray(local_ray):
    with pytest.raises(ValueError, match="job 3 is bad"):
        list(Workers("auto").map(fail_on_three, range(6)))
