"""The tools' command lines, parsed and checked before TensorFlow is imported.

Importing TensorFlow takes seconds; a mistyped flag, a missing required flag or a missing gin file should not
wait for it. Each tool's `__main__` calls `start(tool)` first thing: it keeps native log lines off the console
(`apps.console`), defines the tool's flags, parses `sys.argv` and checks what needs no TensorFlow. A problem
ends the process with one line, `error: ...`, and exit code 1. The tool then imports TensorFlow and runs
`app.run(main, flags_parser=parsed_argv)`. This module imports only absl and the standard library.
"""

import os
import sys

from absl import app, flags

from apps import console

GIN_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
TRAIN_MODES = ("train", "eval", "train_and_eval")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

FLAGS = flags.FLAGS
_parsed_argv = None


def resolve_gin_file(path):
    """`path` as given if it exists, else under gin_configs/."""
    return path if os.path.exists(path) else os.path.join(GIN_CONFIGS, path)


def missing_gin_files(gin_files):
    """The gin files that exist neither as given nor under gin_configs/."""
    return [path for path in gin_files if not os.path.exists(resolve_gin_file(path))]


def gin_files_problem(gin_files):
    """One line naming the first gin file that does not exist, or None."""
    missing = missing_gin_files(gin_files)
    return f"gin file {missing[0]!r} does not exist (looked in . and {GIN_CONFIGS})." if missing else None


def _gin_flags():
    flags.DEFINE_multi_string("gin_file", [], "Gin files; `include` paths resolve against gin_configs/.")
    flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'Experiment.train_steps = 10'.")


def _check_gin_files():
    return gin_files_problem(FLAGS.gin_file)


def _train_flags():
    _gin_flags()
    flags.DEFINE_string("model_dir", None, "Directory of checkpoints, summaries and the operative config.")
    flags.DEFINE_enum("mode", "train", TRAIN_MODES, "train, eval, or train_and_eval.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES,
                      "tf.distribute strategy: default (one device), mirrored (all local devices), multi_worker "
                      "(the workers of TF_CONFIG), tpu.")
    flags.DEFINE_string("tpu", "local", "With --strategy=tpu: 'local' on a Cloud TPU VM, else the TPU's name or "
                                        "grpc://address.")


def _check_train():
    if not FLAGS.model_dir:
        return "--model_dir is required."
    return _check_gin_files()


def _sample_flags():
    flags.DEFINE_string("model_dir", None, "A directory written by apps.train.")
    flags.DEFINE_string("prompt", "", "Text to continue (byte-level models).")
    flags.DEFINE_integer("length", 200, "Number of tokens to generate.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 picks the most likely token.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 for all.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of tokens with this probability.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("stop_id", -1, "Stop a sequence after this token id; -1 for none.")


def _check_sample():
    if not FLAGS.model_dir:
        return "--model_dir is required."
    if FLAGS.length < 1:
        return f"--length={FLAGS.length}: give at least 1 token to generate."
    try:
        FLAGS.prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # undecodable argv bytes arrive as surrogates
        return (f"--prompt is not valid UTF-8 text (an undecodable byte at character {error.start}); give the "
                f"prompt as UTF-8.")
    return None


def _export_flags():
    flags.DEFINE_string("model_dir", None, "A directory written by apps.train.")
    flags.DEFINE_string("export_dir", None, "Where to write saved_model/ and model.keras.")


def _check_export():
    if not FLAGS.model_dir or not FLAGS.export_dir:
        return "--model_dir and --export_dir are required."
    return None


def _convert_t2t_flags():
    _gin_flags()
    flags.DEFINE_string("t2t_checkpoint", None, "A tensor2tensor Routing Transformer checkpoint: its prefix "
                                                "(.../model.ckpt-N) or a directory with a `checkpoint` file.")
    flags.DEFINE_string("model_dir", None, "Where to write the converted checkpoints/, operative_config.gin and "
                                           "model.keras.")


def _check_convert_t2t():
    if not FLAGS.t2t_checkpoint or not FLAGS.model_dir or not FLAGS.gin_file:
        return "--t2t_checkpoint, --gin_file and --model_dir are required."
    path = FLAGS.t2t_checkpoint
    if not (os.path.isfile(os.path.join(path, "checkpoint")) or os.path.isfile(path + ".index")):
        return (f"--t2t_checkpoint={path!r} is neither a checkpoint prefix (no {path}.index) nor a directory "
                f"with a `checkpoint` file.")
    return _check_gin_files()


def _demo_flags():
    flags.DEFINE_string("demo_dir", os.path.join("runs", "quickstart"), "Where the demo writes its model.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_multi_string("gin_param", [], "Bindings on top of quickstart.gin, e.g. "
                                               "'Experiment.train_steps = 50' for a shorter demo.")


TOOLS = {  # tool: (define its flags, check them: an error message or None)
    "train": (_train_flags, _check_train),
    "sample": (_sample_flags, _check_sample),
    "export": (_export_flags, _check_export),
    "experiment_info": (_gin_flags, _check_gin_files),
    "demo": (_demo_flags, lambda: None),
    "convert_t2t": (_convert_t2t_flags, _check_convert_t2t),
}


def start(tool):
    """The start of `python -m common.<tool>`: quiet console, flags defined, parsed and checked (one-line error
    and exit 1 on a problem; `--help` prints the usage and exits)."""
    global _parsed_argv
    console.quiet_native_logs()
    define, check = TOOLS[tool]
    app.define_help_flags()
    define()
    try:
        _parsed_argv = FLAGS(sys.argv)
    except flags.Error as error:
        sys.exit(f"error: {error}")
    problem = check()
    if problem:
        sys.exit(f"error: {problem}")


def parsed_argv(argv):
    """`app.run`'s flags_parser after `start`: the arguments are parsed already."""
    del argv
    return _parsed_argv
