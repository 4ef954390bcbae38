"""Where block tasks run: the calling thread, or a dask.distributed cluster.

Both are ``concurrent.futures`` executors (:class:`InThreadExecutor`, or the executor a
``distributed.Client`` provides with ``get_executor``), so one loop submits and awaits tasks
for either.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ...errors import Cancelled, InputError
from ...jobs import CancelFlag, is_cancelled

_DISTRIBUTED_HINT = "dask.distributed is needed for --workers/--scheduler: pip install distributed"
#: Seconds to wait for a scheduler to answer before saying that none did.
CONNECT_TIMEOUT = 10.0


def _connect(client_cls, address: str):
    """A client of the scheduler at ``address``; a malformed address or a scheduler that
    does not answer within :data:`CONNECT_TIMEOUT` is one InputError saying which."""
    try:
        return client_cls(address, timeout=CONNECT_TIMEOUT)
    except ValueError as err:  # distributed's parser: "missing port number", unknown scheme
        raise InputError(
            f"{address!r} is not a scheduler address ({err}); give tcp://host:port, or "
            "local:N for N local processes."
        ) from None
    except (OSError, TimeoutError) as err:
        raise InputError(
            f"No dask scheduler answered at {address} within {CONNECT_TIMEOUT:g} s: start it "
            "there, or check the host and port."
        ) from err


def _client_classes():
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # an optional extra on some installs
        raise InputError(_DISTRIBUTED_HINT) from err
    return Client, LocalCluster


class InThreadExecutor(cf.Executor):
    """Runs each task at submit, in the calling thread, and returns its finished future.

    In-process blocks run one at a time anyway (torch uses every core for one block), and
    running them in the caller's thread keeps torch's work in one thread: once a second
    thread has run torch's parallel code, the OpenMP runtime (libgomp, the Linux wheels')
    counts more threads than cores and stops its workers spinning between operations, and
    every forward pass of the process gets slower (1.3x on 2 cores; docs/benchmarks.md).
    Ctrl+C (KeyboardInterrupt) propagates at once instead of being stored in the future.
    """

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - re-raised by future.result()
            future.set_exception(exc)
        return future


#: Address schemes of dask.distributed schedulers (its comm backends).
SCHEDULER_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")


def local_workers(scheduler: str) -> int | None:
    """N of ``"local:N"`` (N local worker processes), None for any other text; an
    InputError when the address is ``local:`` with no positive whole number. Other addresses
    must be ``scheme://...`` with a dask.distributed scheme, or ``host:port`` (tcp): checked
    before any connection, here and in the 3D dock as the address is typed."""
    text = scheduler.strip()
    if text.startswith("local:"):
        try:
            workers = int(text.split(":", 1)[1])
        except ValueError as err:
            raise InputError(f"local:N needs a number of workers, got {scheduler!r}") from err
        if workers < 1:
            raise InputError("local:N needs N >= 1 worker processes")
        return workers
    if not (text.startswith(SCHEDULER_SCHEMES) or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text)):
        raise InputError(
            f"{scheduler!r} is not a scheduler address: give tcp://host:port, or local:N for "
            "N local processes."
        )
    return None


class Runner:
    """Submit tasks to the calling thread or a dask.distributed client, a window at a time.

    ``scheduler``: None (this process), a ``distributed.Client``, a scheduler address, or
    ``"local:N"``; ``workers=N`` with no scheduler starts a local cluster of N processes.
    """

    def __init__(self, scheduler: Any = None, workers: int | None = None) -> None:
        self.client = None
        self._own: list = []
        if isinstance(scheduler, str):
            local = local_workers(scheduler)
            if local is not None:
                workers, scheduler = local, None
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise InputError(f"workers must be a number of processes >= 1, got {workers!r}")
        if scheduler is None and workers:
            client_cls, cluster_cls = _client_classes()
            cluster = cluster_cls(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = client_cls(cluster)
            self._own = [self.client, cluster]
            self.slots = workers
        elif scheduler is not None:
            client_cls, _ = _client_classes()
            self.client = (
                scheduler if isinstance(scheduler, client_cls) else _connect(client_cls, scheduler)
            )
            if self.client is not scheduler:
                self._own = [self.client]
            self.slots = max(1, sum(self.client.nthreads().values()))
        else:
            # In-process: one block at a time, in this thread (InThreadExecutor).
            self.slots = 1
        if self.client is None:
            self.executor: cf.Executor = InThreadExecutor()
        else:
            self.executor = self.client.get_executor(pure=False)

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def task_memory(self) -> int | None:
        """Bytes one task may use: None in-process (this machine's RAM decides); on a
        cluster the least any worker gives one of its threads (its ``memory_limit`` over its
        threads), 0 when a worker sets no limit or the scheduler does not say."""
        if self.client is None:
            return None
        try:
            workers = self.client.scheduler_info().get("workers", {}).values()
            shares = [int(w.get("memory_limit") or 0) // max(1, int(w.get("nthreads") or 1))
                      for w in workers]  # fmt: skip
        except Exception:  # noqa: BLE001 - an unusual scheduler: the fixed blocks
            return 0
        return min(shares) if shares and min(shares) > 0 else 0

    def _submit(self, fn: Callable, *args: Any) -> cf.Future:
        if self.client is None:  # runs the task here: leave the warnings filters alone
            return self.executor.submit(fn, *args)
        with warnings.catch_warnings():
            # Block inputs read here travel with their task by design (at most a window of
            # them): distributed's "large graph" advice does not apply.
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            return self.executor.submit(fn, *args)

    def worker_threads(self) -> int | None:
        """torch threads per task on a cluster we started (share the cores, do not fight)."""
        if self._own and self.slots:
            return max(1, (os.cpu_count() or 1) // self.slots)
        return None

    def map(
        self,
        fn: Callable,
        items: list,
        args: Callable[[Any], tuple],
        cancel: CancelFlag,
        on_done: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Run ``fn(*args(item))`` for every item; ``on_done(item, result)`` as they finish.

        At most twice the number of worker slots are in flight, so block inputs sent from
        this process never pile up. On cancel, pending tasks are dropped, running ones are
        awaited (they check the cancel flag themselves) and :class:`Cancelled` is raised.
        """
        todo: Iterator = iter(items)
        running: dict = {}
        window = 2 * self.slots
        try:
            while True:
                while len(running) < window and not is_cancelled(cancel):
                    item = next(todo, None)
                    if item is None:
                        break
                    running[self._submit(fn, *args(item))] = item
                if not running:
                    break
                done, _ = cf.wait(list(running), timeout=0.2, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    item = running.pop(fut)
                    result = fut.result()  # re-raises the task's error here
                    if on_done is not None:
                        on_done(item, result)
                if is_cancelled(cancel) and not running:
                    break
        except BaseException:
            for fut in running:
                fut.cancel()
            cf.wait(list(running))
            raise
        if is_cancelled(cancel):
            raise Cancelled(
                "Cancelled; the finished blocks are kept: run again with resume (--resume; "
                "'resume an interrupted run' in the 3D dock) to finish."
            )

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for obj in self._own:
            obj.close()
