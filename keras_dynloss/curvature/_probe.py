"""The compiled body of `CurvatureProbe`: every loop of one probe in one call.

`ProbeGraph` builds, for a model, a loss and a probe configuration, one
`tf.function` `(x, y, sw, starts, seed) -> results` that runs at the current
parameters (read in-graph, nothing written):

* a Lanczos loop (`krylov.lanczos_loop`) on the Hessian or Gauss-Newton
  operator (target `"main"`), one per layer with `per_layer` (`"layer/<name>"`),
  one on Adam's preconditioned operator `P^-1/2 H P^-1/2` (`"eos"`), one on the
  empirical NTK (`"ntk"`);
* a Hutchinson loop on the main operator (`"trace"`).

Each Lanczos starts from `starts[target]`, the sum of the previous probe's top
Ritz vectors (zero before the first probe), plus a random unit vector scaled by
`noise` (a cold start is the random vector alone), and stops when the top-k
residuals fall below `tol` relative (or after `order` products). It returns the
top-k Ritz values, their residuals, the products used and the next start.
"""

import tensorflow as tf

from keras_dynloss.curvature import counter_random
from keras_dynloss.curvature import eos as eos_lib
from keras_dynloss.curvature import flat as flat_lib
from keras_dynloss.curvature import hessian
from keras_dynloss.curvature import krylov
from keras_dynloss.curvature import micro_batches
from keras_dynloss.curvature import ntk as ntk_lib
from keras_dynloss.curvature import trace


class ProbeGraph:
    """One compiled probe (see the module docstring).

    Args:
        model: the built model.
        loss: the loss to differentiate.
        config: dict with keys `operator`, `mode`, `training`, `variables`,
            `layers` (list of `(name, layer)` for per-layer spectra), `top_k`,
            `order`, `tol`, `noise`, `trace_samples` (0: none), `ntk` (bool),
            `ntk_order`, `ntk_trace_outputs`, `eos_optimizer` (an Adam to
            precondition with, or `None`), `replicas` (a
            `distributed.ShardedProducts` or `None`), optionally
            `micro_batch_size` (an int, `"auto"`: `micro_batches.auto_batch_size`
            on `x`, or `None`; see `micro_batches`) and `jit_compile`.
        x: an example probe input (sizes the NTK).
    """

    def __init__(self, model, loss, config, x):
        self.config = config
        self.flat = flat_lib.FlatParameters(model, config["variables"])
        kwargs = dict(operator=config["operator"], mode=config["mode"], training=config["training"])
        micro = config.get("micro_batch_size")
        if micro == "auto":
            micro = micro_batches.auto_batch_size(self.flat, x, training=config["training"])
        #: Rows per sub-batch of every product (`None`: the whole batch at once).
        self.micro_batch_size = micro
        if micro:

            def operator(flat):
                return micro_batches.micro_batched_curvature_fn(flat, loss, micro, **kwargs)
        else:

            def operator(flat):
                return hessian.linearized_curvature_fn(flat, loss, **kwargs)

        self.product = operator(self.flat)
        self.layers = []
        for name, layer in config["layers"]:
            flat = flat_lib.FlatParameters(model, [layer])
            self.layers.append((name, flat, operator(flat)))
        self.sizes = {"main": self.flat.size}
        for name, flat, _ in self.layers:
            self.sizes["layer/" + name] = flat.size
        if config["eos_optimizer"] is not None:
            self.sizes["eos"] = self.flat.size
            self.preconditioner = eos_lib.inverse_sqrt_preconditioner_fn(
                config["eos_optimizer"], self.flat.variables
            )
        if config["ntk"]:
            n_samples, k = ntk_lib.num_samples_and_outputs(self.flat, x, config["training"])
            replicas = config["replicas"]
            #: The devices the NTK products are sharded over (`None`: one device).
            self.ntk_devices = None if replicas is None else replicas.devices
            ntk_kwargs = dict(trace_outputs=config["ntk_trace_outputs"], training=config["training"], num_outputs=k)
            if micro:
                self.ntk_linearized = micro_batches.micro_batched_ntk_fn(self.flat, micro, **ntk_kwargs)
            else:
                self.ntk_linearized = ntk_lib.ntk_linearized_fn(self.flat, devices=self.ntk_devices, **ntk_kwargs)
            self.sizes["ntk"] = n_samples if config["ntk_trace_outputs"] else n_samples * k
        self.names = list(self.sizes)
        self.total = sum(self.sizes.values())
        self.ks = {name: (config["top_k"] if name == "main" else 1) for name in self.names}
        # A closure per instance: TensorFlow's retracing detector counts per
        # Python function, and every probe rebuild is a new graph by design.
        self.fn = tf.function(lambda *args: self.compute(*args), reduce_retracing=True, autograph=False,
                              jit_compile=config.get("jit_compile", False))
        self._concrete = None

    def initial_starts(self):
        """Zero warm starts (cold start at the first probe): one `(total,)` vector."""
        return tf.zeros([self.total], tf.float64)

    def __call__(self, x, y, sw, starts, seed, *, fixed_shapes=True):
        """Runs one probe: `(summary, next_starts)`; see `unpack` for `summary`.

        With `fixed_shapes` the first call's concrete function is kept and called
        directly (no per-call signature dispatch: a few hundred microseconds).
        """
        if not fixed_shapes:
            return self.fn(x, y, sw, starts, seed)
        if self._concrete is None:
            self._concrete = self.fn.get_concrete_function(x, y, sw, starts, seed)
        return self._concrete(x, y, sw, starts, seed)

    def unpack(self, summary):
        """NumPy `summary` -> `{target: {"values", "residuals", "steps", "breakdowns"}}` (+ `"trace"`)."""
        out, i = {}, 0
        for name in self.names:
            k = self.ks[name]
            out[name] = {"values": summary[i:i + k], "residuals": summary[i + k:i + 2 * k],
                         "steps": float(summary[i + 2 * k]), "breakdowns": int(summary[i + 2 * k + 1])}
            i += 2 * k + 2
        if self.config["trace_samples"]:
            out["trace"] = summary[i:]
        return out

    @property
    def summary_size(self):
        """Length of the `summary` vector `compute` returns."""
        size = sum(2 * self.ks[name] + 2 for name in self.names)
        return size + (self.config["trace_samples"] if self.config["trace_samples"] else 0)

    def compute(self, x, y, sw, starts, seed):
        """The probe as graph code (what `fn` compiles; callable inside another
        traced function, e.g. a training step): `(summary (summary_size,),
        next_starts (total,))`, float64."""
        parts = tf.split(starts, [self.sizes[name] for name in self.names])
        out = self._probe(x, y, sw, dict(zip(self.names, parts)), seed)
        summary = []
        for name in self.names:
            item = out[name]
            summary += [item["values"], item["residuals"],
                        tf.stack([tf.cast(item["steps"], tf.float64), tf.cast(item["breakdowns"], tf.float64)])]
        if "trace" in out:
            summary.append(out["trace"])
        return tf.concat(summary, 0), tf.concat([out[name]["next"] for name in self.names], 0)

    # ------------------------------------------------------------------ #
    def _matvec(self, flat, linearized, x, y, sw, after=()):
        """`v -> A v` in float64; the operator's first pass (see
        `hessian.linearized_curvature_fn`) runs here, after the tensors `after`,
        so that one target's activations are alive at a time."""
        with tf.control_dependencies(after):
            if self.config["replicas"] is not None:
                return self.config["replicas"].matvec(flat, linearized, x, y, sw)
            return _in_float64(linearized(flat.read(), x, y, sw), flat.dtype)

    def _lanczos(self, mv, start, seed, k, order, gram_norm=None):
        order = min(order, int(start.shape[0]))
        noise = counter_random.uniform_like(start, seed)
        noise = noise / tf.norm(noise)
        norm = tf.norm(start)
        v0 = tf.where(norm > 0, start / tf.maximum(norm, 1e-300) + self.config["noise"] * noise, noise)
        if self.config["tol"] is None or k != 1:
            gram_norm = None
        run = krylov.lanczos_loop(mv, v0, order, tol=self.config["tol"], k=k, seed=seed, gram_norm=gram_norm)
        values, residuals, vectors = krylov.ritz(run, k)
        products = tf.cast(run.steps, tf.float64)  # + 1/2 for the Gram pair's backward passes
        if gram_norm is not None:
            products += 0.5 * tf.cast(run.gram[0], tf.float64)
        return {
            "values": values,
            "residuals": residuals,
            "steps": products,
            "breakdowns": run.breakdowns,
            "next": tf.reduce_sum(vectors, axis=1),
        }

    def _probe(self, x, y, sw, starts, seed):
        cfg = self.config

        def seeds(i):  # one stream per target, built only where used
            return counter_random.fold_in(seed, i)

        out = {}
        main = self._matvec(self.flat, self.product, x, y, sw)
        out["main"] = self._lanczos(main, starts["main"], seeds(0), cfg["top_k"], cfg["order"])
        done = [out["main"]["values"]]
        if cfg["trace_samples"]:
            out["trace"] = trace.hutchinson_loop(main, self.flat.size, cfg["trace_samples"], seeds(2))
            done.append(out["trace"])
        if "eos" in self.sizes:
            opt = eos_lib.unwrap(cfg["eos_optimizer"])

            def preconditioned():
                d = self.preconditioner()
                return self._lanczos(lambda v: d * main(d * v), starts["eos"], seeds(3), 1, cfg["order"])

            def undefined():  # no update yet: P is not defined
                nan = tf.constant(float("nan"), tf.float64)
                return {"values": tf.fill([1], nan), "residuals": tf.fill([1], nan),
                        "steps": tf.constant(0.0, tf.float64), "breakdowns": tf.constant(0), "next": starts["eos"]}

            out["eos"] = tf.cond(tf.convert_to_tensor(opt.iterations) > 0, preconditioned, undefined)
            done.append(out["eos"]["values"])
        for i, (name, flat, linearized) in enumerate(self.layers):
            mv = self._matvec(flat, linearized, x, y, sw, after=done)
            layer_seed = counter_random.fold_in(seeds(1), i)
            out["layer/" + name] = self._lanczos(mv, starts["layer/" + name], layer_seed, 1, cfg["order"])
            done = [out["layer/" + name]["values"]]
        if cfg["ntk"]:
            with tf.control_dependencies(done):
                linearized = self.ntk_linearized(self.flat.read(), x)
            ntk_mv = _in_float64(linearized, self.flat.dtype)

            def gram_norm(q):  # Theta = M M^T: the Gram pair (krylov.lanczos_loop)
                return linearized.gram_norm(tf.cast(q, self.flat.dtype))

            out["ntk"] = self._lanczos(ntk_mv, starts["ntk"], seeds(4), 1, cfg["ntk_order"], gram_norm=gram_norm)
        return out


def _in_float64(matvec, dtype):
    """`v -> matvec(v)` for float64 `v` and result, computed in `dtype`."""
    return lambda v: tf.cast(matvec(tf.cast(v, dtype)), tf.float64)
