"""Worker processes of the sweeps: one GPU each with memory growth, a share of the CPU threads.

There is no GPU here, so the device assignment is checked against a fake device list
(monkeypatched `tf.config`); the CPU path runs end to end with two spawned workers.
"""

import multiprocessing
import os
import time

import pytest
import tensorflow as tf

from keras_dynloss.experiments import sweep, workers


class FakeConfig:
    """Records what a worker asks of `tf.config` on a machine with `gpus` GPUs."""

    def __init__(self, monkeypatch, gpus):
        self.devices = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU")
                        for i in range(gpus)]
        self.visible, self.growth, self.threads = [], [], []
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: list(self.devices) if kind == "GPU" else [])
        monkeypatch.setattr(tf.config, "set_visible_devices",
                            lambda devices, kind=None: self.visible.append((list(devices), kind)))
        monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                            lambda device, enable: self.growth.append((device, enable)))
        monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads",
                            self.threads.append)
        monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads",
                            self.threads.append)


@pytest.mark.parametrize("gpus", [1, 2, 3])
def test_each_worker_gets_one_gpu_round_robin_with_memory_growth(monkeypatch, gpus):
    fake = FakeConfig(monkeypatch, gpus)
    names = [workers.configure_worker_devices(i) for i in range(5)]
    expected = [fake.devices[i % gpus] for i in range(5)]
    assert names == [d.name for d in expected]
    assert fake.visible == [([d], "GPU") for d in expected]
    assert fake.growth == [(d, True) for d in expected]


def test_cpu_only_machine_changes_nothing(monkeypatch):
    fake = FakeConfig(monkeypatch, 0)
    assert workers.configure_worker_devices(3) is None
    assert fake.visible == [] and fake.growth == []


def test_pool_initializer_hands_out_worker_indices(monkeypatch):
    # What each spawned worker runs first: workers 0, 1, 2 get GPUs 0, 1, 0 of two, each
    # with memory growth, and their share of the threads.
    fake = FakeConfig(monkeypatch, 2)
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    for _ in range(3):
        workers._init_worker(3, counter)
    gpu0, gpu1 = fake.devices
    assert fake.visible == [([gpu0], "GPU"), ([gpu1], "GPU"), ([gpu0], "GPU")]
    assert fake.growth == [(gpu0, True), (gpu1, True), (gpu0, True)]
    assert fake.threads == [3] * 6 and counter.value == 3


def test_set_cpu_threads(monkeypatch):
    fake = FakeConfig(monkeypatch, 0)
    assert workers.set_cpu_threads(2) is True and fake.threads == [2, 2]
    assert workers.set_cpu_threads(0) is False and fake.threads == [2, 2]
    with pytest.raises(ValueError, match="Invalid value for argument `threads`"):
        workers.set_cpu_threads(-1)

    def too_late(n):
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", too_late)
    assert workers.set_cpu_threads(1) is False


def _job(*, width, seed, meeting):
    """A worker's run: what the worker sees, and a value of its arguments. It first waits
    (at most a minute) until two workers have arrived in the folder `meeting`, so that a
    fast worker cannot take every job."""
    open(os.path.join(meeting, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(meeting)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return dict(width=width, seed=seed, value=width * 10 + seed, pid=os.getpid(),
                gpus=len(tf.config.list_logical_devices("GPU")),
                threads=tf.config.threading.get_intra_op_parallelism_threads())


def test_two_cpu_workers_append_their_runs(tmp_path):
    (tmp_path / "meeting").mkdir()
    jobs = [dict(width=w, seed=s, meeting=str(tmp_path / "meeting"))
            for w, s in ((4, 0), (5, 1), (4, 2))]
    out = sweep.run(_job, jobs, name="pool", settings={}, key=("width", "seed"),
                    out=str(tmp_path), processes=2, progress=False)
    rows = out["rows"]
    assert [r["value"] for r in rows] == [40, 51, 42]  # in job order
    assert len({r["pid"] for r in rows}) == 2 and os.getpid() not in {r["pid"] for r in rows}
    assert all(r["gpus"] == 0 for r in rows)
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in rows)
    written = sweep.read_runs(str(tmp_path / "pool.jsonl"))
    assert sorted(r["value"] for r in written) == [40, 42, 51]
