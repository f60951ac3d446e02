"""`api.check_prune_args` refuses every bad argument before any model or data is touched."""

import pytest
import torch

from prunelab import api
from prunelab.data.corpora import CalibrationConfig
from prunelab.errors import PrunelabError
from prunelab.methods.masks import NMPattern
from prunelab.zoo.models import LoadedModel


class Untouchable:
    """Stands in for a model and tokenizer: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the arguments were checked")


@pytest.fixture
def untouchable():
    return LoadedModel(model=Untouchable(), tokenizer=Untouchable(), name="untouchable")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("Pruning removes weights from a network. " * 50)
    return path


def test_valid_arguments_come_back_converted(text_file):
    args = api.check_prune_args("sparsegpt", None, "2:4", str(text_file), {"percdamp": "0.02"},
                                seed=3)
    assert args.sparsity == 0.5 and args.pattern == NMPattern(2, 4)
    assert args.method.name == "sparsegpt" and args.method.config.percdamp == 0.02
    assert args.calibration == CalibrationConfig(str(text_file), 128, 512, 3)
    plain = api.check_prune_args("wanda", 0.5)
    assert plain.pattern is None and plain.calibration == CalibrationConfig()


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(sparsity=1.5), "outside [0, 1)"),
    (dict(sparsity=-0.1), "outside [0, 1)"),
    (dict(sparsity="half"), "outside [0, 1)"),
    (dict(), "no sparsity given"),
    (dict(pattern="4:2"), "N must be at least 1 and below M"),
    (dict(pattern="2-4"), "not of the form N:M"),
    (dict(pattern="2:4", sparsity=0.3), "disagrees with pattern"),
    (dict(method="nope", sparsity=0.5), "unknown method"),
    (dict(method="magnitude-band", pattern="2:4"), "does not support N:M"),
    (dict(sparsity=0.5, options={"alpha": 1}), "no option alpha"),
    (dict(method="sparsegpt", sparsity=0.5, options={"percdamp": "lots"}), "is not a float"),
    (dict(sparsity=0.5, calibration="no-such-corpus"), "unknown text source"),
    (dict(sparsity=0.5, calibration="/no/such/file.txt"), "does not exist"),
    (dict(sparsity=0.5, calibration=CalibrationConfig(n_samples=0)), "at least one sample"),
    (dict(sparsity=0.5, calibration=CalibrationConfig(seqlen=1)), "too short"),
    (dict(sparsity=0.5, calibration=CalibrationConfig(seqlen=7)), "use --seqlen 8 or more"),
    (dict(sparsity=0.5, calibration=CalibrationConfig(seed=-1)), "not a non-negative integer"),
    (dict(sparsity=0.5, seed=True), "not a non-negative integer"),
    (dict(sparsity=0.5, calibration=42), "not a calibration"),
])
def test_bad_arguments_are_refused(kwargs, fragment):
    kwargs = {"method": "wanda", **kwargs}
    with pytest.raises(PrunelabError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        api.check_prune_args(**kwargs)


def test_calibration_files_must_be_nonempty_utf8(tmp_path):
    empty, binary, folder = tmp_path / "empty.txt", tmp_path / "binary.txt", tmp_path / "dir"
    empty.write_text("\n \n")
    binary.write_bytes(b"\xff\xfe\x00 not text")
    folder.mkdir()
    for source, fragment in ((empty, "is empty"), (binary, "not UTF-8"), (folder, "not a file")):
        with pytest.raises(PrunelabError, match=fragment):
            api.check_prune_args("wanda", 0.5, calibration=str(source))


def test_existing_output_dir_is_refused(tmp_path):
    with pytest.raises(PrunelabError, match="already exists"):
        api.check_prune_args("wanda", 0.5, out=tmp_path)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(sparsity=1.5), "outside"),
    (dict(sparsity=0.5, calibration="no-such-corpus"), "unknown text source"),
    (dict(sparsity=0.5, calibration=CalibrationConfig(n_samples=0)), "at least one sample"),
    (dict(sparsity=0.5, batch_size=0), "batch size"),
    (dict(sparsity=0.5, device="toaster"), "device"),
    pytest.param(dict(sparsity=0.5, device="cuda"), "sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_prune_checks_before_touching_the_model(untouchable, kwargs, fragment):
    with pytest.raises(PrunelabError, match=fragment):
        api.prune(untouchable, "wanda", **kwargs)


def test_model_dependent_checks(text_file):
    from prunelab.testing import tiny_loaded

    loaded = tiny_loaded()
    small = CalibrationConfig(str(text_file), 4, 64)
    api.check_model_fit(loaded, api.check_prune_args("wanda", None, "2:4", small))
    with pytest.raises(PrunelabError, match="does not divide"):
        api.check_model_fit(loaded, api.check_prune_args("wanda", None, "2:7", small))
    long = CalibrationConfig(str(text_file), 4, 100000)
    with pytest.raises(PrunelabError, match="longer than the model's context"):
        api.check_model_fit(loaded, api.check_prune_args("wanda", 0.5, calibration=long))
    enough = CalibrationConfig(str(text_file), 4, 64)
    api.check_model_fit(loaded, api.check_prune_args("wanda", 0.5, calibration=enough),
                        calibration_text=True)
    tiny = text_file.with_name("tiny.txt")
    tiny.write_text("too short")
    few = api.check_prune_args("wanda", 0.5, calibration=CalibrationConfig(str(tiny), 4, 64))
    api.check_model_fit(loaded, few)  # the text's length is not checked unless asked
    with pytest.raises(PrunelabError, match="fewer than one window"):
        api.check_model_fit(loaded, few, calibration_text=True)


def test_one_calibration_config_from_what_a_caller_holds(text_file):
    from prunelab.data.calibration import calibration_config

    assert calibration_config() == CalibrationConfig()  # every default, from defaults.py
    assert calibration_config(text_file, seed=2) == CalibrationConfig(str(text_file), seed=2)
    study_section = {"source": str(text_file), "n_samples": 4, "seqlen": 64}
    assert calibration_config(study_section, 5) == CalibrationConfig(str(text_file), 4, 64, 5)
    with pytest.raises(PrunelabError, match="at least one sample"):
        calibration_config({**study_section, "n_samples": 0})


def test_the_text_and_window_checks_load_no_torch():
    """So that the command line can refuse a bad source or size before the model stack loads."""
    import subprocess
    import sys

    code = ("import sys; from prunelab.data.calibration import calibration_config; "
            "from prunelab.data.checks import check_perplexity_args; "
            "check_perplexity_args(); calibration_config(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_windows_per_forward_fill_a_token_budget_on_the_cpu():
    from prunelab.compress import prune_batch_size

    assert [prune_batch_size(n, "cpu") for n in (128, 256, 512, 2048)] == [4, 2, 1, 1]
    assert prune_batch_size(256, torch.device("cuda", 0)) == 8  # an accelerator: 8 windows


def test_prune_passes_the_default_windows_per_forward(text_file, monkeypatch):
    from prunelab import compress
    from prunelab.testing import tiny_loaded

    seen = {}

    class Stop(Exception):
        """Raised by the stand-in: the call is all this test looks at."""

    def record(*args, batch_size, **kwargs):
        seen["batch_size"] = batch_size
        raise Stop

    monkeypatch.setattr(compress, "prune_blocks", record)
    calibration = CalibrationConfig(str(text_file), 4, 64)
    for given, expected in ((None, 512 // 64), (3, 3)):
        with pytest.raises(Stop):
            api.prune(tiny_loaded(), "wanda", 0.5, calibration=calibration, batch_size=given,
                      progress=False)
        assert seen["batch_size"] == expected
