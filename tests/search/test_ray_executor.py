"""Trials as Ray tasks on a local runtime (2 CPUs, started once for the module): the same scores
as in this process, the scorer shared through the object store, a dead worker retried once."""

import pytest

ray = pytest.importorskip("ray")

from optkit.errors import DistributedError  # noqa: E402
from optkit.search.executors import Failure, SerialExecutor  # noqa: E402
from optkit.search.ray_executor import RayExecutor, check_reachable  # noqa: E402
from tests.search import test_executors as dying_module  # noqa: E402
from tests.search.test_executors import (  # noqa: E402
    CHEAP,
    DIES_ALWAYS,
    DIES_ONCE,
    RAISES,
    dying,
)


@pytest.fixture(scope="module")
def local_ray():
    import cloudpickle

    cloudpickle.register_pickle_by_value(dying_module)  # workers need not import the tests
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(dying_module)


@pytest.mark.slow
def test_ray_scores_like_this_process_and_retries_a_dead_worker(local_ray, scorer, tmp_path):
    # CHEAP is the inherited-weight AUC only (a first torch.export in each worker costs seconds);
    # the same value as here means the supernet came through the object store intact.
    cheap = SerialExecutor(dying(scorer, tmp_path)).map([CHEAP])[0]
    executor = RayExecutor(dying(scorer, tmp_path), workers=2)
    got = executor.map([CHEAP, RAISES, DIES_ONCE, DIES_ALWAYS])
    executor.close()
    assert got[0] == cheap
    assert isinstance(got[1], Failure) and "no cost" in got[1].error and got[1].attempts == 1
    assert got[2] == cheap | {"retried": True}  # its worker died once: retried by Ray
    assert isinstance(got[3], Failure) and got[3].attempts == 2  # died twice: recorded failed
    assert ray.is_initialized()  # an executor that did not start the runtime leaves it running


def test_an_unreachable_address_is_a_clear_error(scorer):  # needs no runtime
    # A closed local port refuses at once; an address that drops packets waits at most
    # CONNECT_TIMEOUT_S for the TCP handshake, never Ray's own minute-long retries.
    with pytest.raises(DistributedError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        RayExecutor(scorer, address="127.0.0.1:1")
    with pytest.raises(DistributedError, match="not host:port"):
        check_reachable("127.0.0.1:port")
