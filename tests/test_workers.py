"""CLI worker processes (``--processes``): one GPU each with memory growth; CPU path.

There is no GPU here, so the device assignment is checked against a fake device
list (monkeypatched ``tf.config``), and the CPU path end to end with two real
spawned workers.
"""

import multiprocessing as mp
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.experiments import _common


class FakeConfig:
    """Records what a worker asks of ``tf.config`` on a machine with ``gpus`` GPUs."""

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
    names = [_common.configure_worker_devices(i) for i in range(5)]
    expected = [fake.devices[i % gpus] for i in range(5)]
    assert names == [d.name for d in expected]
    assert fake.visible == [([d], "GPU") for d in expected]
    assert fake.growth == [(d, True) for d in expected]


def test_cpu_only_machine_changes_nothing(monkeypatch):
    fake = FakeConfig(monkeypatch, 0)
    assert _common.configure_worker_devices(3) is None
    assert fake.visible == [] and fake.growth == []


def test_pool_initializer_hands_out_worker_indices(monkeypatch):
    # What each spawned worker runs first: the shared counter gives workers
    # 0, 1, 2 GPUs 0, 1, 0 of two, each with memory growth, and the thread share.
    fake = FakeConfig(monkeypatch, 2)
    counter = mp.get_context("spawn").Value("i", 0)
    for _ in range(3):
        _common._init_worker(3, counter)
    gpu0, gpu1 = fake.devices
    assert fake.visible == [([gpu0], "GPU"), ([gpu1], "GPU"), ([gpu0], "GPU")]
    assert fake.growth == [(gpu0, True), (gpu1, True), (gpu0, True)]
    assert fake.threads == [3] * 6
    assert counter.value == 3


def _job(width, seed):
    """A worker's job: a tiny float64 spiral run, and what the worker sees."""
    from keras_dynloss.experiments._spiral import train_spiral

    res = train_spiral(width=width, amplitude=10.0, period=10, steps=20, seed=seed,
                       dtype="float64")
    return dict(pid=os.getpid(), final_loss=res["final_loss"],
                gpus=len(tf.config.list_logical_devices("GPU")),
                threads=tf.config.threading.get_intra_op_parallelism_threads())


def test_two_cpu_workers_end_to_end():
    jobs = [dict(width=4, seed=0), dict(width=5, seed=1), dict(width=4, seed=2)]
    pooled = _common.run_jobs(_job, jobs, processes=2, progress=False)
    assert len({r["pid"] for r in pooled}) == 2
    assert os.getpid() not in {r["pid"] for r in pooled}
    assert all(r["gpus"] == 0 for r in pooled)
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in pooled)
    # Same results, in job order, as running the jobs in this process.
    inline = _common.run_jobs(_job, jobs, processes=1, progress=False)
    assert all(r["pid"] == os.getpid() for r in inline)
    np.testing.assert_allclose([r["final_loss"] for r in pooled],
                               [r["final_loss"] for r in inline], rtol=1e-10)
    assert len({round(r["final_loss"], 12) for r in inline}) == 3


def test_set_cpu_threads(monkeypatch):
    fake = FakeConfig(monkeypatch, 0)
    assert _common.set_cpu_threads(2) is True and fake.threads == [2, 2]
    assert _common.set_cpu_threads(0) is False and fake.threads == [2, 2]
    with pytest.raises(ValueError, match="Invalid value for argument `threads`"):
        _common.set_cpu_threads(-1)

    def too_late(n):
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", too_late)
    assert _common.set_cpu_threads(1) is False


@pytest.mark.parametrize("argv, command_line, expected", [
    (["fig4"], True, [1]),  # python -m keras_dynloss fig4: one thread
    (["width-sweep"], True, [1]),
    (["overparam"], True, [0]),  # TensorFlow's default
    (["fig4"], False, [0]),  # cli.main() from a program: its threads are its own
    (["fig4", "--threads", "3"], False, [3]),
])
def test_cli_threads(monkeypatch, argv, command_line, expected):
    from keras_dynloss import _quiet_import, cli

    calls = []
    monkeypatch.setattr(_common, "set_cpu_threads", lambda n, tf=None: calls.append(n))
    monkeypatch.setattr(_quiet_import, "is_command_line", lambda: command_line)
    monkeypatch.setitem(cli._COMMANDS, argv[0], lambda args: [])
    assert cli.main(argv) == 0
    assert calls == expected
