"""The records (infodisent.records): every option and result survives JSON, config.json keeps its format, and
the names a user may give are checked in one place."""

import json
from dataclasses import replace

import pytest

import infodisent
from infodisent.data.datasets import DATASETS, build_dataset
from infodisent.errors import CorruptFileError, InputError
from infodisent.records.data import DATASET_NAMES, DatasetSpec, PartsConfig
from infodisent.records.model import BackboneSpec, HeadConfig, ModelConfig, WeightsSource
from infodisent.records.options import FitConfig, SparseOptions
from infodisent.records.run import CONFIG_VERSION, ConfigVersionError, EditRecord, RunConfig, RunRecord
from infodisent.records.serialize import from_dict, to_dict


def _through_json(x):
    return json.loads(json.dumps(to_dict(x)))


@pytest.mark.parametrize("record", [
    FitConfig(epochs=7, loss="sigmoid", distill=0.5),
    SparseOptions(channels_per_class=None, candidates=(8, 3), frontier=(16,)),
    HeadConfig(12, 4, pruned=True, bias=True),
    PartsConfig(train_per_class=3, scale=(0.2, 0.3), shortcut_class=1),
    DatasetSpec("parts", None, "test", 5, PartsConfig(seed=3)),
    WeightsSource("file", "/w.pt", "ab12"),
    RunConfig(out="/tmp/x", dataset="parts", parts=PartsConfig(seed=2), fit=FitConfig(epochs=2),
              sparse=SparseOptions(candidates=(2, 1)), teacher=0.5),
])
def test_every_option_record_comes_back_from_json_equal(record):
    assert from_dict(type(record), _through_json(record)) == record  # tuples come back as tuples


def _model(**kw) -> ModelConfig:
    spec = BackboneSpec("test_resnet", WeightsSource("random"), 96, (96, 2, 2), True, kw.pop("model_kwargs", None))
    return ModelConfig(spec, {"input_size": (3, 64, 64), "mean": (0.5,) * 3}, HeadConfig(96, 3), ("a", "b", "c"),
                       **kw)


def test_config_json_keeps_its_flat_format_and_reads_back_equal():
    # progress, resume and overwrite steer one invocation and are not recorded: read back as off
    run = RunConfig(out="/tmp/r", dataset="parts", model_kwargs={"drop_rate": 0.1}, progress=False)
    record = RunRecord(_model(channels_per_class=2, model_kwargs={"drop_rate": 0.1}), run,
                       EditRecord("/tmp/src", (3, 5), 2))
    d = _through_json(record)
    assert set(d) == {"version", "backbone", "data", "head", "num_classes", "class_names", "channels_per_class",
                      "run", "edit"}
    assert d["version"] == CONFIG_VERSION and d["num_classes"] == 3 and d["backbone"]["feature_shape"] == [96, 2, 2]
    assert RunRecord.from_dict(d) == record
    assert "progress" not in d["run"] and RunRecord.from_dict(
        _through_json(replace(record, run=replace(run, progress=True)))).run.progress is False


def test_timm_arguments_recorded_with_the_run_alone_reach_the_model():
    """A config.json whose backbone block has no model_kwargs (written before the model record held them)
    still rebuilds the backbone the run trained: they are taken from the run's options."""
    run = RunConfig(out="/tmp/r", dataset="parts", model_kwargs={"drop_rate": 0.1})
    d = _through_json(RunRecord(_model(), run))
    del d["backbone"]["model_kwargs"]
    assert RunRecord.from_dict(d).model.backbone.model_kwargs == {"drop_rate": 0.1}


def test_a_config_of_another_version_or_with_wrong_class_names_is_named():
    d = _through_json(RunRecord(_model()))
    for version, word in ((CONFIG_VERSION - 1, "older"), (CONFIG_VERSION + 1, "newer")):
        with pytest.raises(ConfigVersionError, match=f"cfg.json has format version {version}.*{word}"):
            RunRecord.from_dict({**d, "version": version}, "cfg.json")
    with pytest.raises(CorruptFileError, match=r"cfg.json .*2 class names for a head of 3 classes"):
        RunRecord.from_dict({**d, "class_names": ["a", "b"], "num_classes": 2}, "cfg.json")
    with pytest.raises(CorruptFileError, match="cfg.json .*unknown keys"):
        RunRecord.from_dict({**d, "head": {**d["head"], "width": 3}}, "cfg.json")


def test_the_model_record_refuses_class_names_that_do_not_fit_its_head():
    with pytest.raises(InputError, match="2 class names for a head of 3 classes"):
        replace(_model(), class_names=("a", "b"))


def test_dataset_names_are_checked_in_one_place_with_one_message(tmp_path):
    assert tuple(DATASETS) == DATASET_NAMES  # the registry builds exactly the names the records accept
    said = set()
    for make in (lambda: RunConfig(out="x", dataset="imagenette"), lambda: DatasetSpec("imagenette", None, "test"),
                 lambda: build_dataset("imagenette", tmp_path)):
        with pytest.raises(InputError) as caught:
            make()
        said.add(str(caught.value))
    assert said == {f"unknown dataset 'imagenette'; choose one of {', '.join(DATASET_NAMES)}"}


def test_one_public_path_per_option_record():
    """The options live in the records; the layers above use them and do not re-export them."""
    import infodisent.train.sparse as sparse
    import infodisent.train.training as training

    assert infodisent.FitConfig is FitConfig and infodisent.SparseOptions is SparseOptions
    assert "FitConfig" not in getattr(training, "__all__", []) and "SparseOptions" not in getattr(sparse, "__all__", [])
