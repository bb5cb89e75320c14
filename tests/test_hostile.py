"""Hostile but honest inputs, from a table: each must exit with its code and a message naming the
value or the fix, print no traceback, and leave no run directory behind.

A case is (id, files, argv, exit code, words, env). `files` are written under a temp folder
first ("FIFO" makes a named pipe); `{tmp}` in argv and env is that folder. Every `run` case
without --run-dir / --resume / --dry-run gets `--run-dir {tmp}/run`, which must not exist after.
Everything runs in-process through `prunekit.cli.main` (no subprocess start-up per case).
"""

from __future__ import annotations

import os

import pytest
import torch

import hostile_inputs as H
from prunekit.cli import main

FAST = ["--dataset", "synthetic", "--model", "lenet300", "--epochs", "1", "--no-baseline", "--quiet",
        "--set", "data.options.n_train=100", "--set", "data.options.n_test=20"]
CUDA = torch.cuda.is_available()


def recipe(text: str) -> dict[str, bytes]:
    return {"r.yaml": text.encode()}


R = ["run", "{tmp}/r.yaml"]
MNIST = ["run", "--dataset", "mnist", "--data-dir", "{tmp}/m", "--model", "lenet300", "--epochs", "1", "--quiet"]
CIFAR = ["run", "--dataset", "cifar10", "--data-dir", "{tmp}", "--model", "lenet300", "--epochs", "1", "--quiet"]
FOLDER = ["run", "--dataset", "imagefolder", "--data-dir", "{tmp}/f", "--model", "lenet300", "--epochs", "1",
          "--quiet", "--no-baseline"]


def folder(**classes) -> dict[str, bytes]:
    """Image folder files: classes={'a': n} gives n 8x8 PNGs in train/a and test/a."""
    files = {}
    for name, n in classes.items():
        for split in ("train", "test"):
            for i in range(n):
                files[f"f/{split}/{name}/{i}.png"] = H.png(10 * i)
    return files


CASES = [
    # ---- recipe text: encoding, size, depth, aliases, duplicate keys, tags
    ("alias-bomb-seed", {"r.yaml": H.alias_bomb()}, R, 2, ["expands to more than", "aliases"]),
    ("alias-bomb-stages", {"r.yaml": H.stage_alias_bomb()}, R, 2, ["expands to more than"]),
    ("latin-1", {"r.yaml": "name: caf\xe9\n".encode("latin-1")}, R, 2, ["not utf-8", "save the recipe as utf-8"]),
    ("utf-16", {"r.yaml": "seed: 1\n".encode("utf-16")}, R, 2, ["not utf-8"]),
    ("random-bytes", {"r.yaml": bytes(range(128, 256)) * 4}, R, 2, ["not utf-8"]),
    ("nul-byte", {"r.yaml": b"seed: 1\x00\n"}, R, 2, ["nul byte"]),
    ("deep-flow", {"r.yaml": H.nested(2000)}, R, 2, ["nested too deeply"]),
    ("deep-flow-40", {"r.yaml": H.nested(40)}, R, 2, ["nested too deeply", "32"]),
    ("deep-block", {"r.yaml": H.nested(60, block=True)}, R, 2, ["nested too deeply"]),
    ("duplicate-top-key", recipe("seed: 1\nseed: 2\n"), R, 2, ["'seed' is given twice", "line 2"]),
    ("duplicate-nested-key", recipe("train:\n  lr: 0.1\n  lr: 0.2\n"), R, 2, ["'lr' is given twice"]),
    ("too-large", {"r.yaml": b"# " + b"x" * (1 << 20) + b"\n"}, R, 2, ["bytes, more than"]),
    ("python-tag", recipe("seed: !!python/object/apply:os.system ['true']\n"), R, 2, ["not valid yaml", "no tags"]),
    ("yaml-syntax", recipe("seed: [1, 2\n"), R, 2, ["not valid yaml"]),
    ("top-level-list", recipe("- prune\n- train\n"), R, 2, ["must be a mapping"]),
    ("top-level-scalar", recipe("42\n"), R, 2, ["must be a mapping", "42"]),
    ("recursive-alias", recipe("seed: &a [*a]\n"), R, 2, ["seed", "valid integer"]),
    ("int-key", recipe("1: x\n"), R, 2, ["key 1 is not a name"]),
    ("recipe-is-dir", {"d/x": b""}, ["run", "{tmp}/d"], 2, ["is neither a file nor a bundled recipe"]),
    ("recipe-missing", {}, ["run", "{tmp}/nope.yaml"], 2, ["neither a file nor a bundled recipe"]),
    ("recipe-fifo", {"p.yaml": "FIFO"}, ["run", "{tmp}/p.yaml"], 2, ["is neither a file nor a bundled recipe"]),
    ("unknown-top-key", recipe("sed: 1\n"), R, 2, ["unknown key", "did you mean 'seed'"]),
    # ---- types: no bool for numbers, ranges
    ("bool-sparsity", recipe("stages:\n  - prune: {sparsity: false}\n"), R, 2, ["sparsity", "got false", "float"]),
    ("bool-seed", recipe("seed: true\n"), R, 2, ["seed", "got true", "int"]),
    ("bool-epochs", recipe("train: {epochs: true}\n"), R, 2, ["train.epochs", "got true"]),
    ("bool-lr", recipe("train: {lr: false}\n"), R, 2, ["train.lr", "got false"]),
    ("bool-batch-size", recipe("data: {batch_size: true}\n"), R, 2, ["data.batch_size", "got true"]),
    ("bool-in-eps-list", recipe("evaluate: {robustness: {eps: [true]}}\n"), R, 2, ["eps", "true/false"]),
    ("bool-stage-epochs", recipe("stages:\n  - train: {epochs: false}\n"), R, 2, ["stages[0].train.epochs"]),
    ("bool-repeat-times", recipe("stages:\n  - repeat: {times: true, stages: [train]}\n"), R, 2, ["times", "got true"]),
    ("string-sparsity", recipe("stages:\n  - prune: {sparsity: x}\n"), R, 2, ["sparsity", "'x'"]),
    ("sparsity-1.5", recipe("stages:\n  - prune: {sparsity: 1.5}\n"), R, 2, ["outside [0, 1)"]),
    ("sparsity-negative", recipe("stages:\n  - prune: {sparsity: -0.1}\n"), R, 2, ["outside [0, 1)"]),
    ("epochs-negative", recipe("train: {epochs: -1}\n"), R, 2, ["train.epochs", "-1"]),
    ("lr-zero", recipe("train: {lr: 0}\n"), R, 2, ["train.lr", "greater than 0"]),
    ("optimizer-typo", recipe("train: {optimizer: sgdd}\n"), R, 2, ["train.optimizer", "'sgdd'"]),
    ("seed-2-64", {}, ["run", "--seed", "18446744073709551616"], 2, ["18446744073709551616", "2**63-1"]),
    ("seed-negative", {}, ["run", "--seed", "-1"], 2, ["seed", "-1", "from 0"]),
    ("seed-string", {}, ["run", "--set", "seed=abc"], 2, ["seed", "'abc'"]),
    ("huge-string-value", recipe("name: " + "x" * 5000 + "\n"), R, 2, ["name", "5000 characters is too long"]),
    ("huge-string-unknown-key", recipe("x" * 1000 + ": 1\n"), R, 2, ["unknown key", "..."]),
    # ---- devices
    *([] if CUDA else [
        ("device-cuda", {}, ["run", "--device", "cuda"], 2, ["'cuda'", "no usable cuda gpu", "--device cpu"]),
        ("device-cuda-99", {}, ["run", "--device", "cuda:99"], 2, ["'cuda:99'", "--device cpu"])]),
    ("device-meta", {}, ["run", "--device", "meta"], 2, ["'meta'", "cannot train"]),
    ("device-garbage", {}, ["run", "--device", "gpu0"], 2, ["'gpu0'", "not a torch device"]),
    ("device-empty", {}, ["run", "--device", ""], 2, ["device", "not a torch device"]),
    ("device-negative", {}, ["run", "--device", "cuda:-1"], 2, ["'cuda:-1'"]),
    # ---- names used in paths
    ("name-dotdot", {}, ["run", "--name", "../escape"], 2, ["'../escape'", "cannot be a directory name"]),
    ("name-slash", {}, ["run", "--name", "a/b"], 2, ["'a/b'", "without '/'"]),
    ("name-nul", {}, ["run", "--name", "a\x00b"], 2, ["nul byte"]),
    ("name-surrogate", {}, ["run", "--name", "a\udc80b"], 2, ["lone surrogate"]),
    ("name-dot", {}, ["run", "--name", "."], 2, ["cannot be a directory name"]),
    ("name-too-long", {}, ["run", "--name", "n" * 500], 2, ["at most 120 characters"]),
    ("name-newline", {}, ["run", "--name", "a\nb"], 2, ["control characters"]),
    ("output-dir-nul", {}, ["run", "--output-dir", "a\x00b"], 2, ["output_dir", "nul byte"]),
    ("data-dir-nul", {}, ["run", "--data-dir", "a\x00b"], 2, ["data.data_dir", "nul byte"]),
    ("run-dir-nul", {}, ["run", *FAST, "--run-dir", "{tmp}/a\x00b"], 2, ["--run-dir", "nul byte"]),
    ("run-dir-is-file", {"file": b"x"}, ["run", *FAST, "--run-dir", "{tmp}/file"], 2, ["not writable"]),
    ("run-dir-under-file", {"file": b"x"}, ["run", *FAST, "--run-dir", "{tmp}/file/run"], 2, ["not writable"]),
    # ---- stage entries are checked before anything unpacks them
    ("stage-prune-number", recipe("stages:\n  - prune: 0.9\n"), R, 2, ["stages[0].prune", "got 0.9", "{sparsity: 0.9}"]),
    ("stage-prune-string", recipe("stages:\n  - prune: x\n"), R, 2, ["stages[0].prune", "'x'"]),
    ("stages-number", recipe("stages: 3\n"), R, 2, ["stages: must be a list", "got 3"]),
    ("stages-string", recipe("stages: prune\n"), R, 2, ["stages: must be a list", "'prune'"]),
    ("stages-mapping", recipe("stages: {prune: {}}\n"), R, 2, ["stages: must be a list"]),
    ("stage-bare-list", recipe("stages:\n  - [prune]\n"), R, 2, ["stages[0]", "one key", "['prune']"]),
    ("stage-number", recipe("stages:\n  - 5\n"), R, 2, ["stages[0]", "got 5"]),
    ("stage-two-keys", recipe("stages:\n  - {prune: {}, train: {}}\n"), R, 2, ["stages[0]", "one key"]),
    ("stage-null", recipe("stages:\n  -\n"), R, 2, ["stages[0]", "got none"]),
    ("stage-unknown", recipe("stages:\n  - prunee: {}\n"), R, 2, ["unknown stage type 'prunee'", "did you mean 'prune'"]),
    ("stage-int-key", recipe("stages:\n  - 1: {}\n"), R, 2, ["stage type must be a name"]),
    ("repeat-billion", recipe("stages:\n  - repeat: {times: 1000000000, stages: [prune, train]}\n"), R, 2,
     ["2000000000 stages", "lower repeat `times`"]),
    ("repeat-nested-product", recipe("stages:\n  - repeat: {times: 200, stages: [{repeat: {times: 200, stages: [train]}}]}\n"),
     R, 2, ["40000 stages"]),
    ("repeat-no-times", recipe("stages:\n  - repeat: {stages: [train]}\n"), R, 2, ["times", "required"]),
    ("repeat-stages-number", recipe("stages:\n  - repeat: {times: 2, stages: 3}\n"), R, 2, ["repeat.stages: must be a list"]),
    ("repeat-number", recipe("stages:\n  - repeat: 5\n"), R, 2, ["stages[0].repeat", "got 5"]),
    ("repeat-times-zero", recipe("stages:\n  - repeat: {times: 0, stages: [train]}\n"), R, 2, ["times", "greater than or equal to 1"]),
    ("section-train-number", recipe("train: 3\n"), R, 2, ["train: must be a mapping", "got 3"]),
    ("section-model-string", recipe("model: lenet5\n"), R, 2, ["model: must be a mapping", "'lenet5'"]),
    ("section-data-list", recipe("data: [1, 2]\n"), R, 2, ["data: must be a mapping"]),
    ("model-options-number", recipe("model: {options: 3}\n"), R, 2, ["model.options: must be a mapping"]),
    ("data-options-list", recipe("data: {options: [a]}\n"), R, 2, ["data.options: must be a mapping"]),
    ("prune-options-number", recipe("stages:\n  - prune: {options: 3}\n"), R, 2, ["options", "valid dictionary"]),
    ("stages-with-flag", recipe("stages: 3\n"), [*R, "--sparsity", "0.5"], 2, ["stages: must be a list"]),
    # ---- --set paths
    ("set-into-scalar-seed", recipe("seed: 3\n"), [*R, "--set", "seed.x=1"], 2, ["'seed' holds the value 3", "--set seed=value"]),
    ("set-into-default-seed", {}, ["run", "--set", "seed.x=1"], 2, ["seed", "valid integer"]),
    ("set-into-scalar-epochs", recipe("train: {epochs: 2}\n"), [*R, "--set", "train.epochs.x=2"], 2, ["'train.epochs' holds the value 2"]),
    ("set-stage-to-number", {}, ["run", "--set", "stages.0.prune=0.5"], 2, ["stages[0].prune", "got 0.5"]),
    ("set-stage-index-out", {}, ["run", "--set", "stages.5.prune.sparsity=0.5"], 2, ["'5' is not an index below 2"]),
    ("set-stage-index-word", {}, ["run", "--set", "stages.x.prune.sparsity=0.5"], 2, ["'x' is not an index"]),
    ("set-no-equals", {}, ["run", "--set", "train.epochs"], 2, ["must look like key.path=value"]),
    ("set-empty-key", {}, ["run", "--set", "=5"], 2, ["empty part"]),
    ("set-double-dot", {}, ["run", "--set", "train..lr=1"], 2, ["empty part"]),
    ("set-unknown-stage-key", {}, ["run", "--set", "stages.0.prune.nope=1"], 2, ["stages[0].prune.nope", "unknown key"]),
    ("set-unknown-criterion-option", {}, ["run", "--set", "stages.0.prune.options.bogus=1"], 2,
     ["unknown option 'bogus'", "temperature"]),
    ("set-bad-criterion-option-type", {}, ["run", "--set", "stages.0.prune.options.temperature=abc"], 2,
     ["temperature", "'abc'"]),
    ("set-alias-bomb-value", {}, ["run", "--set", "seed=" + H.alias_bomb().decode().replace("\n", "\n")], 2,
     ["expands to more than"]),
    ("set-section-number", {}, ["run", "--set", "train=3"], 2, ["train: must be a mapping"]),
    ("set-stages-number", {}, ["run", "--set", "stages=3"], 2, ["stages: must be a list"]),
    ("set-stage-element-number", {}, ["run", "--set", "stages.0=5"], 2, ["cannot set a list element"]),
    ("set-list-element-key", {}, ["run", "--set", "stages.0.prune.sparsity.x=1"], 2, ["holds the value 0.98"]),
    ("set-surrogate-value", {}, ["run", "--set", "name=a\udc80"], 2, ["not utf-8"]),
    ("set-bool-sparsity", {}, ["run", "--set", "stages.0.prune.sparsity=false"], 2, ["got false"]),
    # ---- options of models, datasets, criteria
    ("model-option-typo", {}, ["run", "--set", "model.options.widht=2", "--model", "resnet20"], 2,
     ["unknown option 'widht'", "did you mean 'width'"]),
    ("model-option-reserved", {}, ["run", "--set", "model.options.in_channels=3"], 2, ["unknown option 'in_channels'"]),
    ("model-width-string", {}, ["run", "--model", "resnet20", "--set", "model.options.width=abc"], 2, ["width", "'abc'", "float"]),
    ("model-width-zero", {}, ["run", "--model", "resnet20", "--set", "model.options.width=0"], 2, ["width", "positive"]),
    ("model-width-bool", {}, ["run", "--model", "resnet20", "--set", "model.options.width=true"], 2, ["width", "got true"]),
    ("data-option-unknown", {}, ["run", "--dataset", "synthetic", "--set", "data.options.bogus=1"], 2, ["unknown option 'bogus'"]),
    ("data-image-size-zero", {}, ["run", "--dataset", "synthetic", "--set", "data.options.image_size=0"], 2, ["image_size", "positive"]),
    ("data-image-size-string", {}, ["run", "--dataset", "synthetic", "--set", "data.options.image_size=abc"], 2, ["image_size", "'abc'"]),
    ("data-n-train-string", {}, ["run", "--dataset", "synthetic", "--set", "data.options.n_train=abc"], 2, ["n_train", "'abc'", "int"]),
    ("data-n-train-bool", {}, ["run", "--dataset", "synthetic", "--set", "data.options.n_train=true"], 2, ["n_train", "got true"]),
    ("data-n-train-billion", {}, ["run", *FAST, "--set", "data.options.n_train=1000000000"], 2,
     ["memory budget", "lower n_train"]),
    ("data-limit-zero", {}, ["run", "--set", "data.options.limit_train=0"], 2, ["limit_train", "positive"]),
    ("data-limit-bool", {}, ["run", "--set", "data.options.limit_train=true"], 2, ["limit_train", "got true"]),
    ("data-reserved-option", {}, ["run", "--set", "data.options.download=true"], 2, ["unknown option 'download'"]),
    # ---- command-line flags
    ("flag-sparsity-2", {}, ["run", "--sparsity", "2"], 2, ["outside [0, 1)"]),
    ("flag-method-unknown", {}, ["run", "--method", "snp", "--dry-run"], 2, ["'snp'", "did you mean 'snip'"]),
    ("flag-model-unknown", {}, ["run", "--model", "lenet"], 2, ["'lenet'", "did you mean"]),
    ("flag-dataset-unknown", {}, ["run", "--dataset", "mnsit"], 2, ["'mnsit'", "did you mean 'mnist'"]),
    ("flag-batch-size-zero", {}, ["run", "--batch-size", "0"], 2, ["data.batch_size", "greater than 0"]),
    ("flag-lr-negative", {}, ["run", "--lr", "-1"], 2, ["train.lr", "-1"]),
    ("flag-optimizer", {}, ["run", "--optimizer", "adamm"], 2, ["'adamm'", "'sgd', 'adam' or 'adamw'"]),
    ("flag-structure", {}, ["run", "--structure", "filterr"], 2, ["'filterr'", "did you mean 'filter'"]),
    ("flag-allocation", {}, ["run", "--allocation", "glob"], 2, ["'glob'"]),
    ("flag-iterations-zero", {}, ["run", "--iterations", "0"], 2, ["iterations", "greater than or equal to 1"]),
    ("flag-epochs-word", {}, ["run", "--epochs", "many"], 2, ["invalid int value: 'many'"]),
    ("memory-budget-env", {}, ["run", *FAST], 2, ["prunekit_memory_budget='lots'", "4g"], {"PRUNEKIT_MEMORY_BUDGET": "lots"}),
    ("memory-budget-tiny", {}, ["run", *FAST], 2, ["memory budget"], {"PRUNEKIT_MEMORY_BUDGET": "1K"}),
    # ---- info
    ("info-huge-input", {}, ["info", "lenet5", "--input-shape", "1,100000,100000"], 2, ["74.5 gib", "memory budget", "smaller"]),
    ("info-big-input", {}, ["info", "lenet5", "--input-shape", "3,4000,4000"], 2, ["memory budget"]),
    ("info-giant-dim", {}, ["info", "lenet5", "--input-shape", "1,99999999999,1"], 2, ["every size must be from 1"]),
    ("info-zero-dim", {}, ["info", "lenet5", "--input-shape", "0,28,28"], 2, ["every size must be from 1"]),
    ("info-words", {}, ["info", "lenet5", "--input-shape", "a,b,c"], 2, ["must be c,h,w"]),
    ("info-two-dims", {}, ["info", "lenet5", "--input-shape", "1,28"], 2, ["must be c,h,w"]),
    ("info-too-small", {}, ["info", "lenet5", "--input-shape", "1,2,2"], 2, ["16x16"]),
    ("info-unknown-model", {}, ["info", "resnet2"], 2, ["did you mean 'resnet"]),
    ("info-zero-classes", {}, ["info", "lenet5", "--num-classes", "0"], 2, ["classes", "from 1"]),
    # ---- resume targets
    ("resume-missing", {}, ["run", "--resume", "{tmp}/nope"], 2, ["no recipe.yaml"]),
    ("resume-empty-dir", {"d/x": b""}, ["run", "--resume", "{tmp}/d"], 2, ["no recipe.yaml"]),
    ("resume-bomb-recipe", {"d/recipe.yaml": H.alias_bomb()}, ["run", "--resume", "{tmp}/d"], 2, ["expands to more than"]),
    # ---- dataset files: IDX
    ("idx-gzip-bomb", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte.gz": H.idx((60000, 28, 28), compress=True)}).items()
        if k != "train-images-idx3-ubyte"}, MNIST, 2, ["declares 44.9 mib", "budget"], {"PRUNEKIT_MEMORY_BUDGET": "8M"}),
    ("idx-header-huge", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte": H.idx((4000000000, 28, 28), payload=b"")}).items()}, MNIST, 2,
     ["truncated", "re-download"]),
    ("idx-gz-header-huge", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte.gz": H.idx((4000000000, 28, 28), payload=b"", compress=True)}).items()
        if k != "train-images-idx3-ubyte"}, MNIST, 2, ["declares", "budget"]),
    ("idx-truncated", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte": H.idx((20, 28, 28))[:-10]}).items()}, MNIST, 2, ["truncated"]),
    ("idx-trailing", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte": H.idx((20, 28, 28)) + b"xx"}).items()}, MNIST, 2, ["trailing bytes"]),
    ("idx-gz-trailing", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte.gz": H.idx((20, 28, 28), payload=bytes(20 * 784 + 5), compress=True)}).items()
        if k != "train-images-idx3-ubyte"}, MNIST, 2, ["trailing bytes"]),
    ("idx-empty", {f"m/{k}": v for k, v in H.idx_folder({"train-images-idx3-ubyte": b""}).items()}, MNIST, 2,
     ["too short for an idx header"]),
    ("idx-wrong-magic", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte": H.idx((20,), bytes(20))}).items()}, MNIST, 2, ["magic number", "0x00000803"]),
    ("idx-torn-gzip", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-images-idx3-ubyte.gz": H.idx((20, 28, 28), compress=True)[:30]}).items()
        if k != "train-images-idx3-ubyte"}, MNIST, 2, ["corrupt or truncated compressed"]),
    ("idx-count-mismatch", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-labels-idx1-ubyte": H.idx((19,), bytes(range(19)))}).items()}, MNIST, 2, ["20 images but", "19 labels"]),
    ("idx-single-class", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-labels-idx1-ubyte": H.idx((20,), bytes(20))}).items()}, MNIST, 2, ["every training image has label 0"]),
    ("idx-label-range", {f"m/{k}": v for k, v in H.idx_folder(
        {"train-labels-idx1-ubyte": H.idx((20,), bytes([200] * 20))}).items()}, MNIST, 2, ["labels span 200..200"]),
    ("idx-missing-files", {"m/x": b""}, MNIST, 2, ["missing idx file", "--download"]),
    ("idx-fifo", {**{f"m/{k}": v for k, v in H.idx_folder({}).items() if k != "t10k-labels-idx1-ubyte"},
                  "m/t10k-labels-idx1-ubyte": "FIFO"}, MNIST, 2, ["missing idx file"]),
    ("data-root-is-file", {"file": b"x"}, ["run", "--dataset", "mnist", "--download", "--quiet"], 2,
     ["cannot write downloads", "prunekit_data"], {"PRUNEKIT_DATA": "{tmp}/file"}),
    ("download-under-file", {"file": b"x"}, ["run", "--dataset", "cifar10", "--download", "--data-dir", "{tmp}/file/d"],
     2, ["cannot write downloads", "--data-dir"]),
    # ---- dataset files: CIFAR pickles
    ("cifar-memo-bomb", H.cifar_folder(H.pickle_memo_bomb()), CIFAR, 2, ["memo bomb"]),
    ("cifar-os-system", H.cifar_folder(H.pickle_with_global()), CIFAR, 2, ["refusing to load 'os.system'"]),
    ("cifar-builtins-eval", H.cifar_folder(H.pickle_with_global("builtins", "eval")), CIFAR, 2, ["'builtins.eval'"]),
    ("cifar-string-labels", H.cifar_folder(H.cifar_batch(labels=["a", "b", "c", "d"])), CIFAR, 2,
     ["'labels' must be a list of integer labels", "'a'"]),
    ("cifar-none-labels", H.cifar_folder(H.cifar_batch(labels=None) .replace(b"labels", b"labelz")), CIFAR, 2,
     ["missing 'data' or 'labels'"]),
    ("cifar-labels-none-value", H.cifar_folder(__import__("pickle").dumps({b"data": __import__("numpy").zeros((4, 3072), "uint8"),
                                                                          b"labels": None}, protocol=2)), CIFAR, 2,
     ["must be a list of integer labels", "none"]),
    ("cifar-bool-labels", H.cifar_folder(H.cifar_batch(labels=[True, False, True, False])), CIFAR, 2, ["integer labels"]),
    ("cifar-empty-file", H.cifar_folder(b""), CIFAR, 2, ["corrupt cifar pickle"]),
    ("cifar-garbage", H.cifar_folder(b"\x80\x02garbage"), CIFAR, 2, ["corrupt cifar pickle"]),
    ("cifar-not-dict", H.cifar_folder(__import__("pickle").dumps([1, 2], protocol=2)), CIFAR, 2, ["expected a dict"]),
    ("cifar-bad-shape", H.cifar_folder(H.cifar_batch(data=__import__("numpy").zeros((4, 100), "uint8"))), CIFAR, 2,
     ["uint8 n x 3072"]),
    ("cifar-label-count", H.cifar_folder(H.cifar_batch(labels=[1, 2])), CIFAR, 2, ["4 images but 2 labels"]),
    # ---- dataset files: image folders
    ("png-bomb", {**folder(a=2, b=2), "f/train/a/bomb.png": H.png_header_only(100000, 100000)}, FOLDER, 2,
     ["bomb.png", "too large to decode"]),
    ("png-big-header", {**folder(a=2, b=2), "f/train/a/big.png": H.png_header_only(9000, 9000)}, FOLDER, 2,
     ["big.png", "declares 9000x9000"]),
    ("png-garbage", {**folder(a=2, b=2), "f/train/a/bad.png": b"not a png"}, FOLDER, 2, ["cannot read image", "bad.png"]),
    ("png-truncated", {**folder(a=2, b=2), "f/train/a/cut.png": H.png(5)[:40]}, FOLDER, 2, ["cut.png"]),
    ("png-fifo", {**folder(a=2, b=2), "f/train/a/x.png": "FIFO"}, FOLDER, 2, ["x.png", "not a regular file"]),
    ("folder-single-class", folder(a=3), FOLDER, 2, ["every training image has label 0", "two classes"]),
    ("folder-empty-test", {**{k: v for k, v in folder(a=2, b=2).items() if "/test/" not in k},
                           "f/test/a/readme.txt": b""}, FOLDER, 2, ["test split is empty"]),
    ("folder-mean-length", folder(a=2, b=2), [*FOLDER, "--set", "data.options.mean=[0.1,0.2]"], 2,
     ["mean [0.1, 0.2] has 2 values", "1 channel"]),
    ("folder-std-zero", folder(a=2, b=2), [*FOLDER, "--set", "data.options.std=[0]", "--set", "data.options.mean=[0]"],
     2, ["std [0] must be positive"]),
    ("folder-image-size-string", folder(a=2, b=2), [*FOLDER, "--set", "data.options.image_size=abc"], 2, ["image_size", "'abc'"]),
    ("folder-channels-bad", folder(a=2, b=2), [*FOLDER, "--set", "data.options.channels=2"], 2, ["channels must be 1 or 3"]),
    ("folder-missing", {}, FOLDER, 2, ["missing folder"]),
    ("folder-no-data-dir", {}, ["run", "--dataset", "imagefolder"], 2, ["needs data_dir"]),
    ("synthetic-no-test", {}, ["run", *FAST, "--set", "data.options.n_test=0"], 2, ["n_test", "positive"]),
]


def _materialize(tmp, files: dict) -> None:
    for rel, content in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "FIFO":
            os.mkfifo(path)
        else:
            path.write_bytes(content)


def _fill(value: str, tmp) -> str:
    return value.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(case, tmp_path, capsys, monkeypatch):
    name, files, argv, code, words, *rest = case
    env = rest[0] if rest else {}
    _materialize(tmp_path, files)
    for key, value in env.items():
        monkeypatch.setenv(key, _fill(value, tmp_path))
    argv = [_fill(a, tmp_path) for a in argv]
    run_dir = tmp_path / "run"
    if argv[0] == "run" and not {"--run-dir", "--resume", "--dry-run"} & set(argv):
        argv += ["--run-dir", str(run_dir)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        got = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        got = e.code
    out, err = capsys.readouterr()
    assert got == code, err[-2000:]
    assert "Traceback" not in out + err
    message = err.lower()
    for word in words:
        assert word.lower() in message, f"{word!r} not in {err[-1500:]!r}"
    assert len(err) < 2500, "messages quote values cut short"
    assert not run_dir.exists(), "a refused run leaves no run directory"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "a refused input writes nothing"


def test_the_table_covers_every_group():
    assert len(CASES) >= 150
    assert len({c[0] for c in CASES}) == len(CASES)
