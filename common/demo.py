"""`make demo`: train the quickstart Routing Transformer on the local corpus, then evaluate and sample.

Trains `gin_configs/quickstart.gin` (a few minutes on 2 CPU cores; rerunning resumes or, once finished, only
evaluates), reports held-out bits per byte next to `xz -9` on the same held-out bytes, prints a sample, and
says where the checkpoint, the TensorBoard logs and the operative gin config are.
"""

import lzma
import os
import sys

from absl import app, flags

from common import data, sample, train

flags.DEFINE_string("demo_dir", os.path.join("runs", "quickstart"), "Where the demo writes its model.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
FLAGS = flags.FLAGS

PROMPT = "def "


def xz_bits_per_byte(text):
    """Compressed size in bits per byte of `text` with xz at preset 9 (what `xz -9` does)."""
    return 8.0 * len(lzma.compress(text, preset=9)) / len(text)


def held_out_bytes(split, data_dir):
    return b"".join(bytes(t) for t in data.raw_split("local_text", split, data_dir=data_dir).as_numpy_iterator())


def main(argv):
    del argv
    train.logging.set_verbosity(train.logging.ERROR)
    params = [f"Experiment.data_dir = {FLAGS.data_dir!r}"] if FLAGS.data_dir else []
    try:
        results = train.run(["quickstart.gin"], params, FLAGS.demo_dir, "train_and_eval")
        model, experiment = sample.load_trained_model(FLAGS.demo_dir)
    except train.UserError as error:
        sys.exit(f"error: {error}")
    text = held_out_bytes(experiment.eval_split, experiment.data_dir)
    xz = xz_bits_per_byte(text)
    continuation = sample.sample_text(model, PROMPT, 300, experiment.sequence_length, temperature=0.8, top_k=40,
                                      seed=0)
    print("\n=== demo results ===")
    print(f"held-out ({experiment.eval_split}, {len(text):,} bytes): {results['bits_per_byte']:.3f} bits/byte; "
          f"xz -9 on the same bytes: {xz:.3f} bits/byte")
    if results["bits_per_byte"] > xz:
        tokens = experiment.train_steps * experiment.batch_size * experiment.sequence_length
        print(f"xz -9 still compresses these bytes better: the demo trains {model.count_params():,} parameters on "
              f"{tokens:,} bytes ({experiment.train_steps} steps); the 10-minute presets "
              f"(gin_configs/*/cpu_small.gin, benchmarks/results/quality.md) and longer runs close the gap.")
    print(f"sample:\n{PROMPT}{bytes(continuation).decode('utf-8', errors='replace')}\n")
    print(f"checkpoints:      {FLAGS.demo_dir}/checkpoints")
    print(f"TensorBoard:      tensorboard --logdir {FLAGS.demo_dir}")
    print(f"operative config: {FLAGS.demo_dir}/operative_config.gin")
    print(f"eval results:     {FLAGS.demo_dir}/eval_results.json")


if __name__ == "__main__":
    app.run(main)
