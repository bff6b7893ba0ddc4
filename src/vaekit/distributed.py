"""Several devices and several hosts: the data-parallel mesh and `jax.distributed` start-up.

Data parallel (`train.devices`): a one-axis `jax.sharding.Mesh` named "data" over the chosen
devices. Parameters, optimizer state and the resident training data are replicated on every
device; each step's gathered batch is sharded on its batch axis (`batch_sharding`), so each
device runs the forward and backward pass on B / n examples and XLA adds the gradients (and
BatchNorm's batch statistics, and every metric's sums) across devices inside the one jitted step.
The program is the single-device program with the batch split: the result equals the
single-device run up to float rounding.

Several hosts (processes): `initialize()` calls `jax.distributed.initialize` from

    VAEKIT_COORDINATOR=host:port  VAEKIT_NUM_PROCESSES=N  VAEKIT_PROCESS_ID=i

or, with none of these set, lets JAX detect the cluster itself where one is plainly there (SLURM
with more than one task, Open MPI with more than one rank, or VAEKIT_DISTRIBUTED=auto for a TPU
pod slice and the other environments JAX knows). Every process runs the same command; the mesh
then spans the devices of all processes, process 0 alone writes the run directory, and Orbax
writes the checkpoints from all of them.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np

from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

AXIS = "data"  # the mesh's one axis: the batch is split along it
DEFAULT_TIMEOUT = 300  # seconds to wait for the coordinator and the other processes (VAEKIT_DISTRIBUTED_TIMEOUT)

_started = False


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise VaekitError(f"{name} must be an integer, got '{value}'") from None


def _wait_for(host: str, port: int, timeout: float) -> None:
    """Return once host:port accepts a TCP connection; VaekitError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(0.1, timeout))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise VaekitError(f"cannot reach the coordinator {host}:{port} after {timeout:g} s ({e.strerror or e}); "
                                  f"start process 0 first, or check VAEKIT_COORDINATOR") from None
            time.sleep(0.25)


def _check_bindable(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise VaekitError(f"process 0 cannot listen on port {port} for the coordinator ({e.strerror or e}); "
                              f"choose another port in VAEKIT_COORDINATOR") from None


def _cluster_detected() -> bool:
    if os.environ.get("VAEKIT_DISTRIBUTED", "").lower() == "auto":
        return True
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS")
    ranks = os.environ.get("OMPI_COMM_WORLD_SIZE")
    return any(v is not None and v.isdigit() and int(v) > 1 for v in (tasks, ranks))


def initialize() -> bool:
    """Join a multi-process run when the environment asks for one (see the module docstring).

    Call before anything touches a JAX device. Returns whether this process is part of a
    multi-process run. Raises VaekitError (one line) for incomplete or bad settings and for a
    coordinator that cannot be reached within VAEKIT_DISTRIBUTED_TIMEOUT seconds.
    """
    global _started
    if _started:
        return True
    names = ("VAEKIT_COORDINATOR", "VAEKIT_NUM_PROCESSES", "VAEKIT_PROCESS_ID")
    given = [n for n in names if os.environ.get(n)]
    timeout = _env_int("VAEKIT_DISTRIBUTED_TIMEOUT") if os.environ.get("VAEKIT_DISTRIBUTED_TIMEOUT") else DEFAULT_TIMEOUT
    if timeout <= 0:
        raise VaekitError(f"VAEKIT_DISTRIBUTED_TIMEOUT must be positive, got {timeout}")
    import jax

    if given:
        if len(given) != len(names):
            missing = [n for n in names if n not in given]
            raise VaekitError(f"a multi-process run needs {', '.join(names)}; {', '.join(missing)} not set")
        address, n, i = os.environ["VAEKIT_COORDINATOR"], _env_int("VAEKIT_NUM_PROCESSES"), _env_int("VAEKIT_PROCESS_ID")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise VaekitError(f"VAEKIT_COORDINATOR must be host:port, got '{address}'")
        if n < 1 or not 0 <= i < n:
            raise VaekitError(f"VAEKIT_PROCESS_ID must be in [0, VAEKIT_NUM_PROCESSES={n}), got {i}")
        if n == 1:
            return False
        # JAX aborts the whole process (no Python exception) when the coordinator never answers:
        # check first, within the timeout, so that the user gets one line instead.
        if i == 0:
            _check_bindable(int(port))
        else:
            _wait_for(host, int(port), timeout)
        kwargs = dict(coordinator_address=address, num_processes=n, process_id=i)
    elif _cluster_detected():
        kwargs = {}
    else:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk through Gloo
    jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    _started = True
    log.info("process %d of %d; %d local and %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def is_main() -> bool:
    """Whether this process writes the run directory, logs and pictures (process 0)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for in a single-process run)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agreed_time() -> float:
    """The current time, process 0's in a multi-process run (run names made from it agree)."""
    import jax

    now = time.time()
    if jax.process_count() == 1:
        return now
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.int32(now)))


def device_count(setting: str) -> int:
    """Devices per process that `train.devices` asks for ("all" or a positive integer).

    Raises VaekitError when more are asked for than this process has.
    """
    import jax

    local = jax.local_device_count()
    if setting == "all":
        return local
    n = int(setting)
    if n > local:
        where = f"this process has {local}" if jax.process_count() > 1 else f"this machine has {local}"
        raise VaekitError(f"train.devices={n} but {where} {jax.default_backend()} device{'s' if local != 1 else ''}")
    return n


def data_mesh(setting: str):
    """The one-axis mesh over the first `train.devices` devices of every process, or None when the
    run uses one device in one process (the plain single-device path)."""
    import jax
    from jax.sharding import Mesh

    n = device_count(setting)
    if n == 1 and jax.process_count() == 1:
        return None
    chosen = [d for p in range(jax.process_count())
              for d in sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:n]]
    return Mesh(np.array(chosen), (AXIS,))


def replicated(mesh):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh):
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(AXIS))


def put_replicated(tree, mesh):
    """Host or device arrays -> global arrays replicated on every device of the mesh (every
    process must pass the same values)."""
    import jax

    sharding = replicated(mesh)

    def one(a):
        a = np.asarray(a)  # (jax.device_put would compare the values across processes; NaN != NaN)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(one, tree)


def local_copy(tree):
    """Replicated global arrays -> this process's own (host) copy, usable without the others."""
    import jax

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return a

    return jax.tree.map(one, tree)


__all__ = ["AXIS", "agreed_time", "barrier", "batch_sharding", "data_mesh", "device_count", "initialize", "is_main", "local_copy",
           "put_replicated", "replicated"]
