# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The inference lifecycle of a batch-norm model
#
# "It works in training and fails in testing" is the most common complaint about batch norm. The cause is
# almost always the running statistics: a batch norm layer holds two kinds of state, the learned
# $\gamma, \beta$ and the *tracked* running mean and variance, and inference needs both. This tutorial
# follows a model from training to deployment and makes each classic mistake on purpose:
#
# 1. train, save a checkpoint, restore it, and check that the restored model computes the same outputs;
# 2. evaluate in training mode by mistake;
# 3. lose the running statistics, and recompute them ("recalibration", also called precise BN);
# 4. let `normlab.doctor` find these mistakes for us;
# 5. fold batch norm into the preceding layer for inference;
# 6. export to ONNX and run the file in onnxruntime.

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort

import normlab as nl
from normlab import nn, optim
from normlab.data import DataLoader, flatten, load_mnist, scale_01
from normlab.interop import to_onnx

train, val, test = load_mnist("sample")
x_train, x_test = flatten(scale_01(train.x)), flatten(scale_01(test.x))
y_train, y_test = train.y, test.y
work = Path(tempfile.mkdtemp(prefix="normlab-lifecycle-"))

# %% [markdown]
# ## 1. Train, save, restore
#
# A batch-norm MLP, two epochs of SGD on the bundled MNIST sample.

# %%
gen = np.random.default_rng(0)
model = nn.Sequential(
    nn.Linear(784, 128, bias=False, rng=gen),
    nn.BatchNorm1d(128),
    nn.ReLU(),
    nn.Linear(128, 64, bias=False, rng=gen),
    nn.BatchNorm1d(64),
    nn.ReLU(),
    nn.Linear(64, 10, rng=gen),
)
optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
nl.fit(model, x_train, y_train, optimizer=optimizer, epochs=2, batch_size=64, seed=0, verbose=0)
reference = nl.evaluate(model, x_test, y_test)
print("test accuracy (eval mode, running statistics):", round(reference["accuracy"], 4))

# %% [markdown]
# `nl.save` writes the parameters, the buffers (running statistics included) and the architecture, so that
# `nl.load` can rebuild the model by itself; it comes back in eval mode, ready for inference.
# `nl.save_checkpoint` adds what resuming *training* needs (the optimizer's state, the epoch); both write
# atomically, so a crash mid-write never leaves a half-written file.

# %%
model_path = nl.save(model, work / "mlp.safetensors")
checkpoint_path = nl.save_checkpoint(work / "ckpt.safetensors", model, optimizer, epoch=2)
print("saved:", [k for k in model.state_dict() if k.startswith("1.")])
restored = nl.load(model_path)
print("restored model is in training mode:", restored.training)
same = np.array_equal(nl.predict(restored, x_test), nl.predict(model, x_test))
print("restored outputs identical to the original's:", same)
assert same and not restored.training

# %% [markdown]
# To resume training, build the same architecture and let `nl.load_checkpoint` fill it and the optimizer:

# %%
resumed = nl.load(model_path)  # any model of the right architecture will do
resumed_optimizer = optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
state = nl.load_checkpoint(checkpoint_path, resumed, resumed_optimizer)
print("checkpoint epoch:", state.epoch)
for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
    assert np.array_equal(resumed.state_dict()[key], model.state_dict()[key])
print("running statistics restored: yes")

# %% [markdown]
# ## 2. Mistake one: evaluating in training mode
#
# In training mode a batch-norm layer normalizes with the statistics of the batch in front of it. At test
# time that makes a prediction depend on which other images share its batch. Harmless-looking batches, such
# as a data set sorted by class, turn that into a disaster: every batch then has one class's statistics.

# %%
order = np.argsort(y_test, kind="stable")  # class-sorted test set
x_sorted, y_sorted = x_test[order], y_test[order]


def accuracy_in_training_mode(net, x, y, batch_size):
    net.train()
    correct = 0
    with nl.no_grad():
        for start in range(0, len(x), batch_size):
            out = net(x[start : start + batch_size])
            correct += int((out.argmax(axis=1) == y[start : start + batch_size]).sum())
    return correct / len(x)


trained_state = {k: v.copy() for k, v in model.state_dict().items()}
mistakes = {
    "eval mode (correct)": reference["accuracy"],
    "train mode, shuffled batches of 200": accuracy_in_training_mode(model, x_test, y_test, 200),
    "train mode, batches of 8": accuracy_in_training_mode(model, x_test, y_test, 8),
    "train mode, class-sorted batches of 100": accuracy_in_training_mode(
        model, x_sorted, y_sorted, 100
    ),
}
for name, acc in mistakes.items():
    print(f"{name:42s} {acc:.4f}")
assert mistakes["train mode, class-sorted batches of 100"] < mistakes["eval mode (correct)"] - 0.3
assert abs(mistakes["train mode, shuffled batches of 200"] - reference["accuracy"]) < 0.02
assert mistakes["train mode, batches of 8"] < reference["accuracy"] - 0.05

# %% [markdown]
# Large shuffled batches come close to the correct number (their statistics are close to the population's),
# which is exactly why this bug survives casual testing. Small or class-sorted batches expose it. Worse, each
# of those training-mode passes also *updated the running statistics* with the test batches:

# %%
leaked = nl.evaluate(model, x_test, y_test)["accuracy"]
print(f"eval mode after the training-mode passes: {leaked:.4f} (was {reference['accuracy']:.4f})")
assert leaked < reference["accuracy"]
model.load_state_dict(trained_state)  # undo the damage before going on
model.eval()

# %% [markdown]
# ## 3. Mistake two: losing the running statistics
#
# Another classic: only the *trainable* parameters are saved (or restored), and the running statistics stay
# at their initial values, mean 0 and variance 1. We simulate it by loading only the parameters into a fresh
# model:

# %%
params_only = {name: p.data for name, p in model.named_parameters()}
lost = nl.load(model_path)
for m in nn.batch_norm_layers(lost):
    m.reset_running_stats()  # what a fresh model has
lost.load_state_dict(params_only, strict=False)
acc_lost = nl.evaluate(lost, x_test, y_test)["accuracy"]
print("running_mean of the first BN layer:", lost[1].running_mean[:4], "...")
print(f"test accuracy with the statistics lost: {acc_lost:.4f}")

# %% [markdown]
# The fix needs no retraining: the running statistics are just averages of the layer's inputs over
# training data, so they can be recomputed from a few hundred batches with the weights as they are.
# `nl.recalibrate_batch_norm(model, batches)` resets every batch norm's statistics and recomputes them as an
# exact average over the given batches (every other layer in eval mode, nothing learned):

# %%
batches = DataLoader(x_train, y_train, batch_size=100, shuffle=True, seed=0)
nl.recalibrate_batch_norm(lost, batches)
acc_recal = nl.evaluate(lost, x_test, y_test)["accuracy"]
print(f"after recalibration: {acc_recal:.4f} (the original model: {reference['accuracy']:.4f})")
assert acc_lost < reference["accuracy"] - 0.05
assert acc_recal > reference["accuracy"]

fig, ax = plt.subplots(figsize=(8, 3.4))
labels = [
    "correct",
    "train mode,\nclass-sorted",
    "train mode,\nbatches of 8",
    "statistics\nlost",
    "recalibrated",
]
values = [
    reference["accuracy"],
    mistakes["train mode, class-sorted batches of 100"],
    mistakes["train mode, batches of 8"],
    acc_lost,
    acc_recal,
]
ax.bar(labels, values, color=["#1f5fbf", "#c05020", "#c05020", "#c05020", "#2a8a3a"])
ax.set(ylabel="test accuracy", ylim=(0, 1), title="the same trained weights, evaluated five ways")
plt.show()

# %% [markdown]
# Recalibration recovers the original accuracy, and here even edges past it: the running averages kept
# during training mix in statistics of earlier weights (with momentum 0.1, the last 20 or so batches weigh
# most), while recalibration averages over many batches with the final weights only.
#
# Recalibration is also the right move after anything that changes the weights without updating the
# statistics: weight averaging, pruning, or fine-tuning with frozen batch norm.
#
# ## 4. The doctor
#
# `normlab.doctor(model, data, labels=...)` examines a model *as it would be used for inference* and reports
# batch-norm mistakes with the evidence and a fix. Without data it runs static checks; with data it also
# measures what the mistakes cost. Nothing in the model changes. Here are the two broken models from above:

# %%
lost_again = nl.load(model_path)
for m in nn.batch_norm_layers(lost_again):
    m.reset_running_stats()
lost_again.load_state_dict(params_only, strict=False)
report = nl.doctor(lost_again, x_test[:500], labels=y_test[:500])
print(report)
assert "BN001" in report.codes("error")

# %%
in_train_mode = nl.load(model_path).train()  # a correct model, left in training mode
report = nl.doctor(in_train_mode, x_sorted[::4], labels=y_sorted[::4], batch_size=8)
print(report)
assert "BN004" in report.codes("warning")

# %% [markdown]
# and the healthy one, which has only `info` findings (opportunities, not mistakes):

# %%
report = nl.doctor(nl.load(model_path), x_test[:500], labels=y_test[:500])
print(report)
assert not report.codes("warning")

# %% [markdown]
# `nl.fit(..., doctor=True)` runs the cheap checks during training, and `normlab doctor FILE --data sample`
# does the same from the command line.
#
# ## 5. Folding batch norm into the previous layer
#
# At inference, batch norm is a fixed affine map per channel:
# $y = \gamma\,(z - \hat\mu)/\sqrt{\hat\sigma^2+\epsilon} + \beta$, with running statistics $\hat\mu, \hat\sigma^2$.
# When $z = W x + b$ comes from a `Linear` (or `Conv2d`) layer, the two compose into one layer with
#
# $$W' = \operatorname{diag}\!\Big(\frac{\gamma}{\sqrt{\hat\sigma^2+\epsilon}}\Big) W, \qquad
#   b' = \frac{\gamma\,(b - \hat\mu)}{\sqrt{\hat\sigma^2+\epsilon}} + \beta,$$
#
# which saves the batch norm's work at inference. `nl.fold_batch_norm(model)` returns a new, eval-only model;
# the original is untouched.

# %%
folded = nl.fold_batch_norm(model)
print(folded)
diff = float(np.max(np.abs(nl.predict(folded, x_test) - nl.predict(model, x_test))))
print(f"max |folded - original| over the test set: {diff:.2e}")
assert diff < 1e-4
assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())

# %% [markdown]
# The difference is float32 round-off: the folded model computes the same function in a different order.
#
# ## 6. Export to ONNX and run it in onnxruntime
#
# `normlab.interop.to_onnx` writes the model's *eval* behaviour as an ONNX graph (optionally folded first).
# Before writing, it checks the graph with `onnx.checker` and runs it on a probe batch to compare with
# normlab's output; then we run the file ourselves in onnxruntime on the test set.

# %%
export = to_onnx(model, work / "mlp.onnx", fold=True, input_shape=(784,))
print(f"wrote {export.path.name}: opset {export.opset}, folded {export.folded}")
print(
    f"verified with {export.verified_with}, max difference on the probe batch {export.max_abs_diff:.1e}"
)

session = ort.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
onnx_out = session.run(None, {input_name: x_test.astype(np.float32)})[0]
ours = nl.predict(model, x_test)
print(
    f"onnxruntime vs normlab on {len(x_test)} test images: max |diff| {np.max(np.abs(onnx_out - ours)):.2e}"
)
print("same predicted classes:", np.array_equal(onnx_out.argmax(axis=1), ours.argmax(axis=1)))
assert np.max(np.abs(onnx_out - ours)) < 1e-4

# %% [markdown]
# **Summary.** A batch-norm model's inference state is its parameters *and* its running statistics: save,
# restore and check both. Evaluate in eval mode; a training-mode pass both gives batch-dependent answers and
# overwrites the statistics. Lost or stale statistics can be recomputed from training data with
# `recalibrate_batch_norm`. The doctor catches these mistakes with evidence, and folding and ONNX export
# produce a deployable model whose outputs match normlab's to float32 round-off.
