"""Values that more than one place must agree on, defined once.

The CUDA C receives the ones it uses as generated `#define`s (fastvae.cuda.sources.defines), so a change here
reaches every backend, and the compiled module's cache key (its source text) changes with it.
"""

# The backends a model or a tool may name ("auto": the gpu where it starts, else the cpu), and the precisions
# (`precision=`, --precision): here, not in fastvae.backends, so that the tools' options need no kernel module.
BACKENDS = ("auto", "cpu", "cpu-bf16", "gpu", "reference")
PRECISIONS = ("fp32", "bf16")

# The hidden layers' activation, chosen by Config.activation; "identity" is the linear layers' (the heads' and the
# output's products). Every one has a derivative that follows from its output y, so no pre-activation is stored:
#   elu: y' = 1 where y > 0, else y + 1;  relu: 1 where y > 0, else 0;  tanh: 1 - y^2;  identity: 1.
# A kernel receives the code (the index here), a compile-time constant in the CUDA C (a template argument) and a
# branch that LLVM hoists out of the loop in Numba (measured: the same time as an ELU-only loop).
ACTIVATIONS = ("identity", "elu", "relu", "tanh")
HIDDEN_ACTIVATIONS = ACTIVATIONS[1:]

# The heads' second half: "gamma" = log sigma^2 (the seed's final form, the field's logvar), or "sigma" itself
# (the seed's first form). The reconstruction term: sigmoid cross-entropy or squared error of sigmoid(logits).
ENCODERS = ("gamma", "sigma")
RECONSTRUCTIONS = ("xent", "mse")

# The sigma form's KL has log(SIGMA_SMOOTHING + sigma^2), so that sigma = 0 does not give log(0) (the seed's 1e-10).
SIGMA_SMOOTHING = 1e-10

# The float64[2] loss accumulator every forward kernel adds to: (reconstruction, KL), summed over rows.
LOSS_RECONSTRUCTION, LOSS_KL = 0, 1
# The int64[COUNTERS] counters in device memory: (seed, steps taken so far, first row). Adam's t is steps + 1; the
# noise of a training step is drawn at (seed, steps); adam_update advances steps. The first row is where a kernel's
# rows start in the step's batch: a shard of rows lo..hi (the cpu backend splits a batch between its threads) draws
# the noise of rows lo..hi of the whole batch, so every split draws the same noise as none.
COUNTER_SEED, COUNTER_STEP, COUNTER_ROW = 0, 1, 2
COUNTERS = 3

# On a device each read of the loss waits for the step to finish, so the trainer checks that it is finite only
# every LOSS_CHECK_INTERVAL_DEVICE steps (the progress bar's rate) and at each epoch's end; on the host, every step.
LOSS_CHECK_INTERVAL_DEVICE = 25

# Evaluation (the test loss) runs in chunks of this many rows, whatever the training batch size: the noise of image i
# is drawn at (seed, step i // EVAL_ROWS, row i % EVAL_ROWS), so the same model always gets the same number. 150 is
# the seed's batch, with which every test loss published for the seed's settings was measured.
EVAL_ROWS = 150

# encode and decode on the cpu backends work in chunks of at most this many rows, so that a call of many rows (the
# IWAE bound decodes 2048 at a time) is shared between the workers (fastvae.inference); OpenBLAS's one-thread sgemm
# runs the decoder's products at the same rate from 150 to 2048 rows (99-103 GFLOP/s, EPYC, 2026-12-07).
CHUNK_ROWS_ON_WORKERS = 256

# An inference workspace (one region of chunk rows per thread: 2.2 MB a thread at the seed's layers and 150 rows) is
# kept for the model's next call up to this size, and freed after its call above it: on a machine of many CPUs one of
# 64 threads x 256 rows took 238 MB (a review), for calls that each take at least 64 chunks' work.
INFERENCE_WORKSPACE_KEPT = 32 * 2**20

# The seed decodes this many codings drawn from N(0, I) after training (Géron's figure of 60 digits).
SAMPLE_CODINGS = 60
