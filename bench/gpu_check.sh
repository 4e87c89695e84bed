#!/usr/bin/env bash
# The package on a lent GPU machine under the JAX backend (JAX and PyTorch there, no
# TensorFlow, no network), in one call of at most 8 minutes. It reports:
#   1. the Fig. 4 job's time, whole process: python -m keras_dynloss fig4 --probe-every 0
#      under KERAS_BACKEND=jax against the two JAX loops of bench/fig4_vs_jax.py (float64
#      with x64, then float32);
#   2. fit's exactness on the GPU against a NumPy gradient-descent loop (float64 reference,
#      Γ(t) re-derived in NumPy): the spiral runner (FullBatchSequential, F(t) recorded) and a
#      plain Sequential (steps_per_execution=5, jit), spiral MLP 2-16-3, float32 (default and
#      "highest" matmul precision) and float64 (x64); then the suite's own NumPy-reference
#      tests of the same, tests/test_spiral_runner.py and tests/test_training_modes.py;
#   3. the ratio of a CNN's curvature probe to its training step (marked section below).
# Each part has its own time limit (at most 480 s together).
#
# Keras and its pure-Python dependencies travel as wheels in .whl/ (ignored by git); the
# package itself travels in the working tree. Once, here, with network:
#     bash bench/gpu_check.sh --fetch        # keras (this machine's version), namex, optree
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"],
# timeout_s=540); the log also lands in $OUT/gpu_check.log.
# Here, without a GPU (tests the script; TensorFlow hidden; a shorter Fig. 4 job):
#     GPU_CHECK_LOCAL=1 PYTHON=python FIG4_ARGS="--steps 3000 --period 500" bash bench/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch" ]; then
    mkdir -p .git/info && touch .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        "keras==$("$PY" -c 'import keras; print(keras.__version__)')" namex optree
    exit
fi

main() {  # (not indented: it holds heredocs)
if [ -z "${GPU_CHECK_LOCAL:-}" ]; then
    ls .whl/keras-*.whl >/dev/null 2>&1 || { echo "no .whl/: run bash bench/gpu_check.sh \
--fetch here, and carry .whl"; exit 1; }
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
START=$SECONDS
section() { echo; echo "=== $1 ($((SECONDS - START)) s so far)"; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c "import sys, jax, keras, numpy; print('python', sys.version.split()[0], '| jax',
jax.__version__, jax.devices(), '| keras', keras.__version__, keras.backend.backend(),
'| numpy', numpy.__version__)"

section "1. Fig. 4 job, whole process (goal under JAX: ours / JAX fori_loop <= 1.2)"
JOBS="ours (JAX),JAX step loop,JAX fori_loop"
timeout 150 "$PY" bench/fig4_vs_jax.py --runs 2 --hide-tf --configs "$JOBS" ${FIG4_ARGS:-}
timeout 70 "$PY" bench/fig4_vs_jax.py --runs 1 --hide-tf --configs "$JOBS" ${FIG4_ARGS:-} \
    --dtype float32

section "2. fit against a NumPy gradient-descent loop (errors relative to the largest value)"
exactness() {
    timeout 40 "$PY" - "$@" <<'EOF'
import sys
sys.modules["tensorflow"] = None  # as on the GPU machine
import jax
import keras
import numpy as np

import keras_dynloss as kd
from keras_dynloss.experiments import _spiral

dtype = sys.argv[1]
keras.config.set_floatx(dtype)
steps, period, width, amplitude, lr = 60, 20, 16, 70.0, 1.0
x, y = kd.datasets.spiral(dtype=dtype)


def gamma(t, static_after=None):  # the paper's Γ(t), re-derived: triangular, cyclic
    if static_after is not None and t >= static_after:
        return np.ones(3)
    k, phase = divmod(t, period)
    raw = np.ones(3)
    raw[k % 3] = 1 + (amplitude - 1) * (1 - abs(2 * phase / period - 1))
    return 3 * raw / raw.sum()


def numpy_gd(weights, static_after=None):
    """F(t) before each update and the final weights, float64, gradients by hand."""
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in weights]
    xs, n, losses = np.asarray(x, np.float64), len(y), []
    for t in range(steps):
        pre = xs @ w1 + b1
        h = np.maximum(pre, 0)
        z = h @ w2 + b2
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        g = gamma(t, static_after)[y]
        losses.append(np.mean(g * -logp[np.arange(n), y]))
        dz = (np.exp(logp) - np.eye(3)[y]) * (g / n)[:, None]
        dh = (dz @ w2.T) * (pre > 0)
        w2, b2 = w2 - lr * h.T @ dz, b2 - lr * dz.sum(0)
        w1, b1 = w1 - lr * xs.T @ dh, b1 - lr * dh.sum(0)
    return np.array(losses), [w1, b1, w2, b2]


def error(got, want):
    return max(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b))
               for a, b in zip(got, want))


tol = 1e-5 if dtype == "float32" else 1e-10
runner = _spiral.build_runner(width=width, amplitude=amplitude, period=period, steps=steps,
                              seed=0, data_seed=0, learning_rate=lr, dtype=dtype, record=True,
                              probe_every=0, probe_ntk=False, updates_per_batch=16,
                              jit_compile=True, loss="ce")
start = runner.model.get_weights()
want_loss, want = numpy_gd(start, static_after=steps - period)  # the runner's last period
runner.model.fit(callbacks=runner.callbacks, **runner.fit_kwargs)
results = {"spiral runner, F(t)": error([runner.recorder.loss], [want_loss]),
           "spiral runner, weights": error(runner.model.get_weights(), want)}
want_loss, want = numpy_gd(start)
plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(width, activation="relu"),
                          keras.layers.Dense(3)])
plain.set_weights(start)
plain.compile(optimizer=keras.optimizers.SGD(lr), jit_compile=True, steps_per_execution=5,
              loss=kd.DynamicalLoss(3, amplitude=amplitude, period=period, from_logits=True))
plain.fit(np.concatenate([x] * steps), np.concatenate([y] * steps), batch_size=len(x),
          shuffle=False, verbose=0, callbacks=[kd.DynamicalLossScheduler()])
results["Sequential fit, weights"] = error(plain.get_weights(), want)
precision = jax.config.jax_default_matmul_precision or "default"
for name, err in results.items():
    print(f"  {dtype} ({precision} matmul precision) {name:24s} max relative error "
          f"{err:.1e}  {'ok' if err <= tol else 'FAILS'} (tolerance {tol:g}, {steps} steps, "
          f"{jax.devices()[0].platform})")
EOF
}
JAX_ENABLE_X64=0 exactness float32
JAX_ENABLE_X64=0 JAX_DEFAULT_MATMUL_PRECISION=highest exactness float32
JAX_ENABLE_X64=1 exactness float64
echo "  the suite's NumPy-reference tests under JAX:"
timeout 75 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_spiral_runner.py \
    tests/test_training_modes.py 2>&1 | tail -5

section "3. CNN curvature probe / training step (goal, steady Hessian + NTK: <= 40 steps)"
# ---------------------------------------------------------------------------------------
# THE RATIO OF A CNN'S PROBE TO ITS TRAINING STEP (issue 24). The CNN of
# bench/curvature_scale.py (30.7k parameters, BatchNorm, two residual blocks), random 28x28x1
# images (no network there), batch 256, SGD(0.05, momentum=0.9): a steady training step
# (median of train_on_batch) against the first and a steady CurvatureProbe(lanczos_order=10)
# of the Hessian alone and of Hessian + NTK (ntk_order=10), each steady probe after 5 steps.
# ---------------------------------------------------------------------------------------
timeout 70 "$PY" - ${PROBE_ARGS:-256 28} <<'EOF'
import statistics, sys, time
sys.modules["tensorflow"] = None  # as on the GPU machine
import keras
import numpy as np

try:
    from keras_dynloss.curvature import CurvatureProbe
except ImportError as err:
    sys.exit(f"  not there yet: keras_dynloss.curvature.CurvatureProbe does not import ({err})")
batch, size = int(sys.argv[1]), int(sys.argv[2])
keras.utils.set_random_seed(0)
L = keras.layers


def conv_bn(h, filters, strides=1, relu=True):
    h = L.BatchNormalization()(L.Conv2D(filters, 3, strides=strides, padding="same")(h))
    return L.ReLU()(h) if relu else h


inputs = keras.Input((size, size, 1))
h = conv_bn(inputs, 20)
h = L.ReLU()(L.Add()([h, conv_bn(conv_bn(h, 20), 20, relu=False)]))
r = conv_bn(conv_bn(h, 40, strides=2), 40, relu=False)
h = L.ReLU()(L.Add()([L.Conv2D(40, 1, strides=2)(h), r]))
model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(h)))
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.random((batch, size, size, 1), dtype="float32")
y = rng.integers(0, 10, batch).astype("int32")


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


model.train_on_batch(x, y)  # compile
step = statistics.median(seconds(lambda: model.train_on_batch(x, y)) for _ in range(20))
print(f"  training step {1e3 * step:.2f} ms ({model.count_params()} parameters, batch {batch})")
for name, ntk in (("Hessian", False), ("Hessian + NTK", True)):
    try:
        probe = CurvatureProbe((x, y), lanczos_order=10, ntk=ntk, ntk_order=10)
        first = seconds(lambda: probe.probe(model))
        steady = []
        for _ in range(3):
            for _ in range(5):
                model.train_on_batch(x, y)
            steady.append(seconds(lambda: probe.probe(model)))
        print(f"  {name:14s} first probe {first:6.2f} s, steady "
              f"{1e3 * statistics.median(steady):8.2f} ms = "
              f"{statistics.median(steady) / step:6.1f} training steps")
    except Exception as err:  # the probe is new: say how it failed, go on
        print(f"  {name}: the probe failed: {type(err).__name__}: {str(err)[:300]}")
EOF

section "done"
}

main 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
