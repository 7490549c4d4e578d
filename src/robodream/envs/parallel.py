"""Rollouts on several processes: a pool of workers that each own one simulator.

A :class:`RolloutPool` runs ``run(state, item)`` for a stream of items (env seeds, episode
jobs) on N workers and hands the results back **in item order**, whichever worker finished
first. Each worker builds its own ``state = setup()`` once (a :class:`MetaWorldEnv`, a
policy) and keeps it for every item it runs, so a result depends only on its item (an
episode on its seed), never on which worker ran it or what that worker ran before. That is
what lets ``robodream collect --workers N`` write the same dataset as one worker.

Three backends behind one interface:

* ``workers=1`` (no Ray): in the calling process, one item at a time, and only when the
  consumer asks for the next result: the reference path the others are held equal to.
* ``workers=N > 1``: N local processes started with ``spawn`` (never ``fork``: torch's
  thread pools and an EGL context do not survive a fork). One renderer per process, as
  :class:`~robodream.envs.meta_world.MetaWorldEnv` requires.
* ``ray_address="host:port"``: N Ray actors (``pip install robodream[ray]``) on an existing
  cluster. Every node needs robodream installed and any path the items or ``setup`` name
  (a policy run directory) at the same place.

Example::

    from functools import partial

    setup = partial(MetaWorldEnv, EnvConfig(task="reach-v3"))
    with RolloutPool(setup, partial(run_expert_episode, post_success_steps=16), workers=2) as pool:
        for seed, episode in zip(seeds, pool.imap(seeds)):
            ...  # stop whenever enough: attempts still running are dropped

``setup`` and ``run`` must be picklable (module-level functions, or ``functools.partial``
of them) unless the pool runs in-process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import re
import signal
import socket
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from robodream.errors import ConfigError, RobodreamError

S = TypeVar("S")  # a worker's state (an env, a policy runner, ...)
T = TypeVar("T")  # an item (an env seed, an episode job)
R = TypeVar("R")  # a result (an episode)

#: Start method of local worker processes: a fresh interpreter each, sharing nothing with
#: the parent (a forked parent's torch thread pools and EGL state do not survive the fork).
START_METHOD = "spawn"
#: Seconds to wait for a Ray cluster: the TCP probe of its address, then ``ray.init``.
RAY_CONNECT_TIMEOUT_S = (5.0, 60.0)
#: Environment of every local worker process: Mesa's software rasteriser (llvmpipe) draws
#: on the worker's own thread instead of starting a thread per core in every worker (N
#: workers already keep the cores busy; a little less CPU per frame, same pixels).
WORKER_ENV = {"LP_NUM_THREADS": "0"}


class WorkerError(RobodreamError):
    """A worker process or Ray actor that died (killed, out of memory, crashed) mid-item."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker; the ``__cause__`` of the re-raised one."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def check_parallelism(workers: int, ray_address: str | None = None) -> None:
    """Validate ``--workers`` / ``--ray-address`` before anything starts.

    Raises:
        ConfigError: ``workers < 1``, or ``ray_address`` given while Ray is not installed.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if ray_address is not None:
        _import_ray()


class RolloutPool(Generic[S, T, R]):
    """N workers, each holding ``state = setup()``, that run ``run(state, item)`` in item order.

    Args:
        setup: ``() -> state``, called once in every worker (lazily, at the first item, in
            the in-process path). A state with a ``close()`` method is closed when the pool is.
        run: ``(state, item) -> result``; item and result are any picklable values.
        workers: number of workers (>= 1). 1 without ``ray_address`` runs in this process.
        ray_address: address of a running Ray cluster (``"host:port"``, ``"ray://host:port"``
            or ``"auto"``): the workers are Ray actors of 1 CPU each. If Ray is already
            initialised in this process, that connection is used whatever the address.
        threads: torch intra-op threads in each worker. Default: 1 in worker processes and
            actors (N workers share the cores); in-process, the caller's setting. Given, the
            in-process path sets it for the pool's lifetime and restores it on :meth:`close`.
        max_ahead: at most this many items are started and not yet returned (bounds the
            results buffered out of order); default ``2 * workers``.

    Raises:
        ConfigError: ``workers < 1``; Ray not installed, its cluster unreachable (within
            :data:`RAY_CONNECT_TIMEOUT_S`) or with fewer CPUs than ``workers``.

    The pool starts its workers at construction (they run ``setup`` while the caller gets
    ready) and is a context manager; :meth:`close` stops them.
    """

    def __init__(self, setup: Callable[[], S], run: Callable[[S, T], R], *, workers: int = 1,
                 ray_address: str | None = None, threads: int | None = None, max_ahead: int | None = None) -> None:
        check_parallelism(workers, ray_address)
        self.workers = workers
        self.max_ahead = max_ahead or 2 * workers
        self._generation = itertools.count()
        self._closed = False
        if ray_address is not None:
            self._backend: _Backend = _RayBackend(setup, run, workers, ray_address, 1 if threads is None else threads)
        elif workers > 1:
            self._backend = _ProcessBackend(setup, run, workers, 1 if threads is None else threads)
        else:
            self._backend = _InProcessBackend(setup, run, threads)

    @property
    def backend(self) -> str:
        """``"in-process"``, ``"processes"`` or ``"ray"``."""
        return self._backend.name

    def imap(self, items: Iterable[T]) -> Iterator[R]:
        """Results of ``run(state, item)`` for ``items``, in the order of ``items``.

        ``items`` is read lazily (it may be endless); the consumer can stop at any point:
        items already started are dropped (their workers are free again for the next call).

        Raises:
            The exception a worker raised on an item, re-raised here with the worker's
            traceback as its ``__cause__`` and a note naming the item (a
            :class:`RobodreamError` stays one, with its one-line message); the pool stays
            usable. WorkerError: a worker died; the pool is then broken (close it).
        """
        if self._closed:
            raise RuntimeError("the RolloutPool is closed")
        if isinstance(self._backend, _InProcessBackend):
            yield from self._backend.imap(items)
            return
        gen = next(self._generation)
        backend = self._backend
        source = iter(items)
        exhausted = False
        started: dict[int, Any] = {}  # item index -> item, for items started but not returned
        done: dict[int, Any] = {}  # item index -> result, finished out of order
        n_started = 0
        next_out = 0
        while True:
            while not exhausted and backend.idle and n_started - next_out < self.max_ahead:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                backend.submit(backend.idle.pop(0), (gen, n_started, item))
                started[n_started] = item
                n_started += 1
            if next_out in done:
                started.pop(next_out)
                result = done.pop(next_out)
                next_out += 1
                yield result
                continue
            if exhausted and next_out == n_started:
                return
            worker, (g, index, ok, payload) = backend.receive()
            if g != gen:  # an item of an earlier, abandoned imap
                continue
            if not ok:
                _raise_remote(payload, f"raised in rollout worker {worker} ({backend.name}) "
                                       f"on item {index}: {_short_repr(started[index])}")
            done[index] = payload

    def close(self) -> None:
        """Stop the workers (those still running an abandoned item are killed) and close
        every worker's state (idempotent)."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> RolloutPool[S, T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- backends
class _Backend:
    """Workers numbered 0..N-1: ``submit`` a task to an idle one, ``receive`` the next result."""

    name = ""
    idle: list[int]  # workers with no task

    def submit(self, worker: int, task: tuple[int, int, Any]) -> None:  # task: (generation, index, item)
        raise NotImplementedError

    def receive(self) -> tuple[int, tuple[int, int, bool, Any]]:
        """Block until a worker finishes: ``(worker, (generation, index, ok, result or packed error))``;
        that worker is idle again."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _InProcessBackend(_Backend):
    name = "in-process"

    def __init__(self, setup: Callable[[], Any], run: Callable[[Any, Any], Any], threads: int | None) -> None:
        self._setup, self._run = setup, run
        self._state: Any = None
        self._has_state = False
        self._prev_threads: int | None = None
        if threads is not None:
            import torch

            self._prev_threads = torch.get_num_threads()
            torch.set_num_threads(threads)

    def imap(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if not self._has_state:
                self._state, self._has_state = self._setup(), True
            yield self._run(self._state, item)

    def close(self) -> None:
        try:
            if self._has_state:
                _close_state(self._state)
        finally:
            self._state, self._has_state = None, False
            if self._prev_threads is not None:
                import torch

                torch.set_num_threads(self._prev_threads)


class _ProcessBackend(_Backend):
    """N local processes; each talks to the parent over its own pipe (tasks in, results out)."""

    name = "processes"

    def __init__(self, setup, run, workers: int, threads: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context(START_METHOD)
        self._conns, self._procs = [], []
        self._busy: set[int] = set()
        try:
            with _main_module_hidden(unless_needed_by=(setup, run)):
                for i in range(workers):
                    parent_conn, child_conn = ctx.Pipe()
                    p = ctx.Process(target=_worker_main, args=(child_conn, setup, run, threads, WORKER_ENV),
                                    name=f"robodream-rollout-{i}", daemon=True)
                    p.start()
                    child_conn.close()
                    self._conns.append(parent_conn)
                    self._procs.append(p)
        except BaseException:
            self.close()
            raise
        self.idle = list(range(workers))

    def submit(self, worker, task):
        self._busy.add(worker)
        try:
            self._conns[worker].send(task)
        except (BrokenPipeError, EOFError, OSError):
            raise self._died(worker) from None

    def receive(self):
        from multiprocessing.connection import wait

        while True:
            busy = sorted(self._busy)
            ready = wait([self._conns[w] for w in busy] + [self._procs[w].sentinel for w in busy])
            for w in busy:
                if self._conns[w] in ready:
                    try:
                        msg = self._conns[w].recv()
                    except (EOFError, OSError):
                        raise self._died(w) from None
                    self._busy.discard(w)
                    self.idle.append(w)
                    return w, msg
            for w in busy:
                if self._procs[w].sentinel in ready and not self._conns[w].poll():
                    raise self._died(w)

    def _died(self, worker: int) -> WorkerError:
        p = self._procs[worker]
        p.join(timeout=1.0)
        code = p.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return WorkerError(f"rollout worker {worker} (pid {p.pid}) died: it {how}")

    def close(self) -> None:
        for w, (conn, p) in enumerate(zip(self._conns, self._procs)):
            if w in self._busy:  # running an item nobody wants any more
                p.terminate()
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for p in self._procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()
        self._busy.clear()


@contextlib.contextmanager
def _main_module_hidden(unless_needed_by: Any) -> Iterator[None]:
    """Start processes that do not import the parent's ``__main__`` script again.

    multiprocessing makes every new process import the parent's main script (as
    ``__mp_main__``) so that functions defined there can be unpickled; for ``robodream`` that
    script is the CLI, i.e. all of robodream and torch: ~1 s of CPU per worker on 2 cores,
    a tenth of a 20-episode collection. When nothing in ``unless_needed_by`` pickles a
    reference to ``__main__``, the parent's ``__main__`` is swapped for an empty module while
    the processes start, and they skip that import.
    """
    if b"__main__" in pickle.dumps(unless_needed_by):
        yield
        return
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _worker_main(conn, setup, run, threads: int, env: dict[str, str]) -> None:
    """A local worker process: build the state, then run tasks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it closes the pool
    os.environ.update(env)
    _limit_threads(threads)
    state, setup_error = None, None
    try:
        state = setup()
    except Exception as e:
        setup_error = _pack_error(e)
    _limit_threads(threads)  # setup may have imported torch
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            gen, index, item = task
            if setup_error is not None:
                conn.send((gen, index, False, setup_error))
                continue
            try:
                msg = (gen, index, True, run(state, item))
            except Exception as e:
                msg = (gen, index, False, _pack_error(e))
            try:
                conn.send(msg)
            except Exception as e:  # an unpicklable result
                conn.send((gen, index, False, _pack_error(e)))
    except (EOFError, BrokenPipeError):  # the parent went away
        pass
    finally:
        if setup_error is None:
            _close_state(state)


class _RayBackend(_Backend):
    """N Ray actors of 1 CPU; ``ray.wait`` returns whichever finishes first."""

    name = "ray"

    def __init__(self, setup, run, workers: int, address: str, threads: int) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started_ray = _connect_ray(ray, address)
        self._actors: list[Any] = []
        self._refs: dict[Any, int] = {}  # object ref of a running task -> worker
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus < workers:
                raise ConfigError(f"the Ray cluster at {address} has {cpus:g} CPUs, fewer than --workers {workers}")
            actor_cls = ray.remote(num_cpus=1)(_RayWorker)
            self._actors = [actor_cls.remote(setup, run, threads) for _ in range(workers)]
        except BaseException:
            self.close()
            raise
        self.idle = list(range(workers))

    def submit(self, worker, task):
        self._refs[self._actors[worker].run.remote(task)] = worker

    def receive(self):
        ray = self._ray
        (ref,), _ = ray.wait(list(self._refs), num_returns=1)
        worker = self._refs.pop(ref)
        self.idle.append(worker)
        try:
            return worker, ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise WorkerError(f"Ray rollout worker {worker} died: {str(e).splitlines()[0]}") from None

    def close(self) -> None:
        ray = self._ray
        try:
            for i, actor in enumerate(self._actors):
                if i in self._refs.values():
                    ray.kill(actor)
                else:
                    try:
                        ray.get(actor.close.remote(), timeout=30)
                    except Exception:
                        pass
                    ray.kill(actor)
        finally:
            self._actors, self._refs = [], {}
            if self._started_ray:
                ray.shutdown()


class _RayWorker:
    """The Ray actor behind :class:`_RayBackend` (wrapped by ``ray.remote`` at pool start)."""

    def __init__(self, setup, run, threads: int) -> None:
        _limit_threads(threads)
        self._run, self._state, self._setup_error = run, None, None
        try:
            self._state = setup()
        except Exception as e:
            self._setup_error = _pack_error(e)
        _limit_threads(threads)

    def run(self, task):
        gen, index, item = task
        if self._setup_error is not None:
            return gen, index, False, self._setup_error
        try:
            return gen, index, True, self._run(self._state, item)
        except Exception as e:
            return gen, index, False, _pack_error(e)

    def close(self) -> None:
        if self._setup_error is None:
            _close_state(self._state)
        self._state = None


# ----------------------------------------------------------------------------- Ray connection
def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray-address needs Ray, which is not installed: pip install robodream[ray]") from None
    return ray


def _connect_ray(ray, address: str) -> bool:
    """Connect to the cluster at ``address``; True if this call initialised Ray (close shuts it down).

    Raises:
        ConfigError: the address refuses or does not answer within :data:`RAY_CONNECT_TIMEOUT_S`.
    """
    if ray.is_initialized():
        return False
    probe_s, init_s = RAY_CONNECT_TIMEOUT_S
    m = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if m:  # fail fast on a closed port or an unreachable host (ray.init itself retries for minutes)
        try:
            socket.create_connection((m.group(1), int(m.group(2))), timeout=probe_s).close()
        except OSError as e:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            outcome["error"] = None
        except BaseException as e:  # noqa: B036  (reported to the caller below)
            outcome["error"] = e

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(init_s)
    if "error" not in outcome:
        raise ConfigError(f"no Ray cluster answered at {address} within {init_s:g} s")
    if outcome["error"] is not None:
        err = outcome["error"]
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {first}") from err
    return True


# ----------------------------------------------------------------------------- helpers
def _limit_threads(threads: int) -> None:
    """torch intra-op threads of this worker process (also for a torch imported later)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _close_state(state: Any) -> None:
    close = getattr(state, "close", None)
    if callable(close):
        close()


def _pack_error(e: BaseException) -> tuple[BaseException | None, str, str]:
    """(the exception if it pickles, else None; ``"Type: message"``; formatted traceback)."""
    tb = "".join(traceback.format_exception(e))
    try:
        pickle.loads(pickle.dumps(e))
        exc: BaseException | None = e
    except Exception:
        exc = None
    return exc, f"{type(e).__name__}: {e}", tb


def _raise_remote(packed: tuple[BaseException | None, str, str], note: str):
    exc, summary, tb = packed
    if exc is None:
        exc = RuntimeError(summary)
    exc.__traceback__ = None
    exc.add_note(note)
    raise exc from RemoteTraceback(tb)


def _short_repr(item: Any, limit: int = 80) -> str:
    r = repr(item)
    return r if len(r) <= limit else r[: limit - 3] + "..."
