"""`make demo`: train the quickstart Routing Transformer on the local corpus, then evaluate and sample.

Trains `gin_configs/quickstart.gin` (300 steps of about a second each on 2 CPU cores; rerunning resumes or,
once finished, only evaluates), scores the first `Experiment.eval_batches` batches of the validation split
(262,144 bytes), reports bits per byte next to `xz -9` on exactly those bytes with a sentence on what the
comparison means, prints a sample, and says where the checkpoint, the TensorBoard logs and the operative gin
config are. About 6 minutes on an idle 2-core machine (371 s measured, install excluded). `--gin_param` adds
bindings on top of quickstart.gin.
"""

import json
import lzma
import os
import sys

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("demo")

from absl import app, flags  # noqa: E402

from apps import checkpoints, command_line, errors, evaluation, sample, train  # noqa: E402

FLAGS = flags.FLAGS

PROMPT = "def "
SAMPLE_LENGTH = 300  # bytes to generate, or fewer: the prompt and the sample fit the model's context


def xz_bits_per_byte(text):
    """Compressed size in bits per byte of `text` with xz at preset 9 (what `xz -9` does)."""
    return 8.0 * len(lzma.compress(text, preset=9)) / len(text)


def quality_results():
    """benchmarks/results/quality.json (the 600-second runs of the cpu_small presets), or None."""
    path = os.path.join(os.path.dirname(command_line.GIN_CONFIGS), "benchmarks", "results", "quality.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def meaning(bits, xz, tokens):
    """One sentence on what the demo's figure against xz -9 means."""
    if bits <= xz:
        return f"The model compresses these bytes better than xz -9 after {tokens:,} training bytes."
    quality = quality_results()
    best = None if quality is None else min(
        (r for r in quality.get("records", []) if r.get("bits_per_byte") is not None),
        key=lambda r: r["bits_per_byte"], default=None)
    sentence = (f"xz -9 still compresses these bytes better: the demo has trained on {tokens:,} bytes, and a model "
                f"of this size needs many times more")
    if best is not None:
        sentence += (f" (in benchmarks/results/quality.md, 600 s of the best cpu_small preset, {best['preset']}, "
                     f"reached {best['bits_per_byte']:.2f} bits/byte against xz's {quality['xz_bits_per_byte']:.2f}: "
                     f"ten minutes of 2 CPU cores are not enough yet)")
    return sentence + "."


def main(argv):
    del argv
    train.logging.set_verbosity(train.logging.ERROR)
    params = ([f"Experiment.data_dir = {FLAGS.data_dir!r}"] if FLAGS.data_dir else []) + FLAGS.gin_param
    try:
        results = train.run(["quickstart.gin"], params, FLAGS.demo_dir, "train_and_eval")
        model, experiment = checkpoints.load_trained_model(FLAGS.demo_dir)
    except errors.UserError as error:
        sys.exit(f"error: {error}")
    text = evaluation.evaluated_bytes(experiment)
    xz = xz_bits_per_byte(text)
    bits = results["bits_per_token"]  # byte-level: one token per byte
    length = min(SAMPLE_LENGTH, experiment.sequence_length - len(PROMPT.encode("utf-8")))
    continuation = sample.sample_text(model, PROMPT, length, experiment.sequence_length, temperature=0.8, top_k=40,
                                      seed=0)
    tokens = results["step"] * experiment.batch_size * experiment.sequence_length
    print("\n=== demo results ===")
    print(f"held-out ({experiment.eval_split} split, first {len(text):,} bytes): {bits:.3f} bits/byte; "
          f"xz -9 on the same bytes: {xz:.3f} bits/byte")
    print(meaning(bits, xz, tokens))
    print(f"sample:\n{PROMPT}{bytes(continuation).decode('utf-8', errors='replace')}\n")
    print(f"checkpoints:      {FLAGS.demo_dir}/checkpoints")
    print(f"TensorBoard:      tensorboard --logdir {FLAGS.demo_dir}")
    print(f"operative config: {FLAGS.demo_dir}/operative_config.gin")
    print(f"eval results:     {FLAGS.demo_dir}/eval_results.json")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
