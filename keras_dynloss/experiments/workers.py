"""Worker processes for the sweeps: one GPU each with memory growth, a share of the CPU."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from keras_dynloss._checks import check_int

__all__ = ["run_jobs", "configure_worker_devices", "set_cpu_threads"]


def configure_worker_devices(index):
    """Gives this process GPU `index mod n` of the n GPUs, with memory growth (TensorFlow,
    before its first op); returns the GPU's name, or None without GPUs."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    gpu = gpus[index % len(gpus)]
    tf.config.set_visible_devices([gpu], "GPU")
    tf.config.experimental.set_memory_growth(gpu, True)
    return gpu.name


def set_cpu_threads(threads):
    """Sets this process's CPU threads (TensorFlow's intra- and inter-op pools, or PyTorch's);
    returns whether it did: not for 0 (the default), on JAX, or once TensorFlow has started."""
    import keras

    if not check_int("threads", threads, minimum=0) or keras.backend.backend() == "jax":
        return False
    if keras.backend.backend() == "torch":
        __import__("torch").set_num_threads(threads)
        return True
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


def _init_worker(threads, counter):
    """Pool initializer: a worker index from `counter`, its GPU, its share of the threads."""
    import keras

    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if keras.backend.backend() == "tensorflow":
        configure_worker_devices(index)
    set_cpu_threads(threads)


def run_jobs(fn, jobs, *, processes=None, progress=True, on_result=None):
    """`[fn(**job) for job in jobs]` (in job order), inline or in spawned worker processes.

    Args:
        fn, jobs: a module-level function (picklable) and keyword dicts.
        processes: worker processes (default `os.cpu_count()`; 1 runs inline), each with
            `os.cpu_count() // processes` CPU threads; on TensorFlow worker i sees GPU i mod n.
        progress: a `keras.utils.Progbar` over the runs, with an ETA.
        on_result: called with each result as it arrives (in this process).
    """
    import keras

    processes = max(1, min(processes or os.cpu_count() or 1, len(jobs) or 1))
    bar = keras.utils.Progbar(len(jobs), unit_name="run") if progress and jobs else None
    results, pool = [None] * len(jobs), None
    finished = ((i, fn(**job)) for i, job in enumerate(jobs))  # inline
    try:
        if processes > 1:
            context = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // processes)
            pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker,
                                       initargs=(threads, context.Value("i", 0)))
            futures = {pool.submit(fn, **job): i for i, job in enumerate(jobs)}
            finished = ((futures[future], future.result()) for future in as_completed(futures))
        for i, result in finished:
            results[i] = result
            if on_result is not None:
                on_result(result)
            if bar is not None:
                bar.add(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results
