"""Helpers shared by the runners."""

import json
import os
import math

import numpy as np

__all__ = ["clean_json", "write_json", "run_jobs", "configure_worker_devices",
           "set_cpu_threads"]


def clean_json(obj, digits=None):
    """``obj`` with NumPy values made plain and NaN / inf replaced by None (strict JSON).

    Args:
        obj: nested dicts / lists / arrays / scalars.
        digits: if given, floats are rounded to this many significant digits.
    """
    if isinstance(obj, dict):
        return {str(k): clean_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist(), digits)
    if isinstance(obj, (np.floating, float)):
        obj = float(obj)
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}") if digits else obj
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(result, out_dir, name, *, digits=None, indent=1):
    """Writes ``clean_json(result)`` to ``out_dir/name.json`` (creating the folder)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(clean_json(result, digits=digits), f, indent=indent)
    return path


def configure_worker_devices(index, tf=None):
    """Gives worker process ``index`` one GPU, with memory growth, if there are GPUs.

    Worker ``i`` of a pool sees only GPU ``i mod n`` (``tf.config.set_visible_devices``),
    round-robin over the ``n`` GPUs TensorFlow finds, and that GPU allocates memory
    as it needs it (``tf.config.experimental.set_memory_growth``), so that several
    workers can share a card and none reserves a whole one (TensorFlow's default).
    On a machine without GPUs nothing changes. Must run before TensorFlow
    initialises its devices (first op) in the process.

    Args:
        index: the worker's index, >= 0.
        tf: the ``tensorflow`` module (a stand-in in tests); imported if None.

    Returns:
        The name of the GPU given to the worker (e.g.
        ``"/physical_device:GPU:1"``), or None on a CPU-only machine.
    """
    if tf is None:
        import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    gpu = gpus[index % len(gpus)]
    tf.config.set_visible_devices([gpu], "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    return gpu.name


def set_cpu_threads(threads, tf=None):
    """Sets TensorFlow's intra- and inter-op CPU threads of this process.

    One thread is fastest for the spiral's 300 x 100 model (an XLA loop of
    small kernels: more threads only add hand-offs, which a loaded machine
    makes slow). Must run before TensorFlow's first op; later it changes
    nothing (TensorFlow refuses, silently here).

    Args:
        threads: threads (>= 1), or 0 for TensorFlow's default.
        tf: the ``tensorflow`` module (a stand-in in tests); imported if None.

    Returns:
        True if set, False if ``threads`` is 0 or TensorFlow had started.
    """
    from keras_dynloss._checks import check_int

    if not check_int("threads", threads, minimum=0):
        return False
    if tf is None:
        import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


def _init_worker(threads, counter=None):
    """Pool initializer: TensorFlow imported as ``import keras_dynloss`` does it
    (without start-up noise), a share of the CPU threads, one GPU (see
    :func:`configure_worker_devices`); ``counter`` hands out worker indices."""
    import keras_dynloss  # noqa: F401  (imports TensorFlow quietly)
    import tensorflow as tf

    index = 0
    if counter is not None:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
    configure_worker_devices(index, tf)
    set_cpu_threads(threads, tf)


def run_jobs(fn, jobs, *, processes=None, progress=True, label="runs"):
    """``[fn(**job) for job in jobs]`` in a pool of spawned processes, with a progress bar.

    Each worker gets ``os.cpu_count() // processes`` TensorFlow threads and, on a
    GPU machine, one GPU with memory growth (worker ``i`` gets GPU ``i mod n``;
    see :func:`configure_worker_devices`), so ``processes`` workers never each
    reserve every GPU.

    Args:
        fn: a module-level function (picklable).
        jobs: list of keyword dicts.
        processes: worker processes (default ``os.cpu_count()``); 1 runs inline.
        progress: progress bar on stderr.
        label: progress bar label.

    Returns:
        The results in the order of ``jobs``.
    """
    import os
    import sys
    import time

    processes = max(1, min(processes or os.cpu_count() or 1, len(jobs) or 1))
    start = time.perf_counter()
    results = [None] * len(jobs)
    done = 0

    def tick():
        if progress:
            bar = "#" * int(30 * done / max(len(jobs), 1))
            sys.stderr.write(f"\r{label} [{bar:.<30}] {done}/{len(jobs)} runs "
                             f"{time.perf_counter() - start:6.1f}s")
            if done == len(jobs):
                sys.stderr.write("\n")
            sys.stderr.flush()

    tick()
    if processes == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(**job)
            done += 1
            tick()
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // processes)
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, counter)) as pool:
        futures = {pool.submit(fn, **job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            tick()
    return results
