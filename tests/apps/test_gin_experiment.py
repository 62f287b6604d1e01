"""apps.gin_experiment: the shipped gin files parse into an Experiment and a model; a missing model or a
bad Experiment value is one line naming what is wrong."""

import pytest

from apps import errors, gin_experiment
from tests.apps.train_helpers import clean_gin  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.mark.parametrize("gin_file, layers, routing", [("quickstart.gin", 4, "causal"),
                                                       ("routing_transformer/local_text.gin", 4, "balanced")])
def test_shipped_gin_configs_parse(gin_file, layers, routing):
    experiment = gin_experiment.parse_config([gin_file], ["Experiment.train_steps = 7"])
    assert experiment.dataset == "local_text" and experiment.train_steps == 7
    model = experiment.model(vocabulary_size=256)
    assert model.num_layers == layers and model.preset["routing"] == routing
    assert model.preset["routing_heads"] > 0


def test_parse_config_needs_a_model():
    with pytest.raises(errors.UserError, match="no model configured"):
        gin_experiment.parse_config([], ["Experiment.train_steps = 3"])


# --- bad values -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("binding, named", [
    ("Experiment.train_steps = -5", "Experiment.train_steps = -5"),
    ("Experiment.train_steps = 'abc'", "Experiment.train_steps = 'abc'"),
    ("Experiment.batch_size = 0", "Experiment.batch_size = 0"),
    ("Experiment.clip_norm = -1.0", "Experiment.clip_norm = -1.0"),
    ("Experiment.eval_every = 2.5", "Experiment.eval_every = 2.5"),
    ("Experiment.eval_stride = 0", "Experiment.eval_stride = 0"),
    ("Experiment.eval_stride = 100000", "Experiment.eval_stride = 100000: expected at most the sequence_length"),
    ("Experiment.learning_rate = 'fast'", "Experiment.learning_rate = 'fast'"),
])
def test_bad_experiment_values_are_refused_naming_the_field(binding, named):
    with pytest.raises(errors.UserError, match="expected") as error:
        gin_experiment.parse_config(["quickstart.gin"], [binding])
    assert named in str(error.value) and "\n" not in str(error.value)
