import json

import numpy as np
import pytest

import restore3d as r3
from restore3d.pipeline import PASSTHROUGH, Stage

SP = (0.3, 0.1, 0.1)


class AddConstant(Stage):
    default_name = "add"

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, volume, ctx):
        return volume + np.float32(self.value)


class Scale(Stage):
    def __init__(self, factor: float = 2.0, weights=None):
        self.factor = factor
        self.weights = weights

    def __call__(self, volume, ctx):
        w = 1.0 if self.weights is None else float(np.sum(self.weights))
        return volume * np.float32(self.factor * w)


class Noisy(Stage):
    def __init__(self, amount: float = 1.0):
        self.amount = amount

    def __call__(self, volume, ctx):
        return volume + self.amount * ctx.rng.random(volume.shape).astype(np.float32)


class InPlace(Stage):
    def __call__(self, volume, ctx):
        volume += 5
        return volume


class Broken(Stage):
    def __call__(self, volume, ctx):
        return volume * np.nan


@pytest.fixture
def vol():
    """The smallest volume a run accepts (3 planes of 8 x 8)."""
    return np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)


def test_exact_arithmetic_and_naming(vol):
    """Stages run in order; bare stages are named by default_name with numbering."""
    pipe = r3.Pipeline([AddConstant(1.0), Scale(3.0), AddConstant(-2.0)])
    assert [n for n, _ in pipe] == ["add", "scale", "add_2"]
    out = pipe.run(vol, spacing=SP)
    np.testing.assert_array_equal(np.asarray(out), (vol + 1) * 3 - 2)
    assert np.asarray(out).dtype == np.float32 and out.shape == vol.shape
    assert set(out.timings) == {"add", "scale", "add_2", "total"}


def test_access_replace_and_passthrough(vol):
    """Steps are reachable by name or index, replaceable by name, removable with 'passthrough'."""
    pipe = r3.Pipeline([("a", AddConstant(1.0)), ("s", Scale(2.0))])
    assert pipe["a"] is pipe[0] and pipe.named_steps["s"] is pipe[-1]
    pipe["s"] = Scale(10.0)
    np.testing.assert_array_equal(np.asarray(pipe.run(vol, spacing=SP)), (vol + 1) * 10)
    pipe.set_params(a=PASSTHROUGH)
    np.testing.assert_array_equal(np.asarray(pipe.run(vol, spacing=SP)), vol * 10)
    pipe.replace("a", None)
    assert pipe["a"] == PASSTHROUGH
    assert len(pipe[1:]) == 1


def test_set_get_params(vol):
    """Nested parameters use name__param, like scikit-learn."""
    pipe = r3.Pipeline([("a", AddConstant(1.0)), ("s", Scale())])
    pipe.set_params(a__value=4.0, s__factor=0.5)
    params = pipe.get_params()
    assert params["a__value"] == 4.0 and params["s__factor"] == 0.5
    np.testing.assert_array_equal(np.asarray(pipe.run(vol, spacing=SP)), (vol + 4) * 0.5)
    with pytest.raises(ValueError, match=r"no step named 'b' \(from 'b__value'\); steps are \['a', 's'\]"):
        pipe.set_params(b__value=1)
    with pytest.raises(ValueError, match=r"AddConstant has no parameter 'valeu'"):
        pipe.set_params(a__valeu=1)


def test_json_round_trip_same_output(tmp_path, vol):
    """A pipeline saved to JSON and loaded back gives the same output (arrays and randomness included)."""
    pipe = r3.Pipeline([("a", AddConstant(0.5)), ("s", Scale(2.0, weights=np.array([0.25, 0.75], np.float32))),
                        ("n", Noisy(0.1)), ("gone", PASSTHROUGH)])
    path = pipe.save(tmp_path / "pipe.json")
    back = r3.Pipeline.load(path)
    assert [n for n, _ in back] == ["a", "s", "n", "gone"]
    np.testing.assert_array_equal(np.asarray(pipe.run(vol, spacing=SP, seed=3)),
                                  np.asarray(back.run(vol, spacing=SP, seed=3)))
    assert not np.array_equal(np.asarray(pipe.run(vol, spacing=SP, seed=3)),
                              np.asarray(pipe.run(vol, spacing=SP, seed=4)))
    assert json.loads(path.read_text())["steps"][3] == {"name": "gone", "stage": "passthrough"}
    result = pipe.run(vol, spacing=SP)
    assert r3.Pipeline.from_dict(result.pipeline).to_dict() == pipe.to_dict()


def test_real_stage_round_trip(tmp_path, small_sim):
    """The background stage runs end to end and survives JSON."""
    pipe = r3.Pipeline([r3.SubtractBackground(method="percentile", percentile=20.0)])
    back = r3.Pipeline.load(pipe.save(tmp_path / "p.json"))
    a = np.asarray(pipe.run(small_sim.raw, spacing=small_sim.spacing))
    b = np.asarray(back.run(small_sim.raw, spacing=small_sim.spacing))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and np.median(a) < np.median(small_sim.raw) - 50


def test_keep_intermediates(vol):
    """keep= returns the outputs of named steps; unknown names are rejected."""
    pipe = r3.Pipeline([("a", AddConstant(1.0)), ("s", Scale(3.0))])
    res = pipe.run(vol, spacing=SP, keep=["a"])
    np.testing.assert_array_equal(res.intermediates["a"], vol + 1)
    with pytest.raises(ValueError, match=r"keep names unknown steps \['b'\]"):
        pipe.run(vol, spacing=SP, keep=["b"])


def test_input_never_modified(vol):
    """run() works on a copy even when a stage writes in place."""
    before = vol.copy()
    out = r3.Pipeline([InPlace()]).run(vol, spacing=SP)
    np.testing.assert_array_equal(vol, before)
    np.testing.assert_array_equal(np.asarray(out), before + 5)


@pytest.mark.parametrize("bad,match", [
    (np.ones((3, 4)), "must be 3D"),
    (np.ones((0, 3, 4)), "empty"),
    (np.array([[[1.0, np.nan]]]), "NaN or Inf"),
    (np.ones((2, 3, 4), complex), "real numbers"),
])
def test_bad_volumes_rejected(bad, match):
    """Wrong ndim, empty, non-finite and non-numeric input raise ValueError."""
    with pytest.raises(ValueError, match=match):
        r3.Pipeline([AddConstant()]).run(bad, spacing=SP)


@pytest.mark.parametrize("spacing,match", [
    (None, "spacing is required"), ((0.3, 0.1), "3 entries"), ((0.3, -0.1, 0.1), "dy must be a positive"),
    (0.1, "single number"), ((0.3, float("nan"), 0.1), "dy must be a positive"),
])
def test_bad_spacing_rejected(vol, spacing, match):
    """Missing or non-positive spacing raises ValueError."""
    with pytest.raises(ValueError, match=match):
        r3.Pipeline([AddConstant()]).run(vol, spacing=spacing)


def test_psf_larger_than_volume(vol):
    """A PSF larger than the volume is rejected."""
    with pytest.raises(ValueError, match="larger than the volume"):
        r3.Pipeline([AddConstant()]).run(vol, spacing=SP, psf=np.ones((5, 5, 5)))


def test_given_psf_on_result(vol):
    """A PSF given to run() is normalised and returned on the result."""
    res = r3.Pipeline([AddConstant()]).run(vol, spacing=SP, psf=np.ones((1, 3, 3)))
    assert res.psf.sum() == pytest.approx(1.0)


def test_stage_errors():
    """Broken stages, duplicate names and bad steps are reported by name."""
    with pytest.raises(RuntimeError, match="stage 'broken' produced NaN"):
        r3.Pipeline([Broken()]).run(np.ones((3, 8, 8)), spacing=SP)
    with pytest.raises(ValueError, match=r"these repeat: \['x'\]"):
        r3.Pipeline([("x", AddConstant()), ("x", Scale())])
    with pytest.raises(ValueError, match="must not contain '__'"):
        r3.Pipeline([("a__b", AddConstant())])
    with pytest.raises(TypeError, match="expected a restore3d Stage"):
        r3.Pipeline([("x", lambda v: v)])
    with pytest.raises(KeyError, match="no step named 'nope'"):
        r3.Pipeline([AddConstant()])["nope"]


def test_from_dict_errors(tmp_path):
    """Unknown stage types, parameters and keys in a config are rejected, listing what is valid."""
    with pytest.raises(ValueError, match="unknown stage type 'Magic'"):
        r3.Pipeline.from_dict({"steps": [{"name": "m", "stage": "Magic"}]})
    with pytest.raises(ValueError, match=r"unknown parameters \['valu'\]; valid: \['value'\]"):
        r3.Pipeline.from_dict({"steps": [{"name": "a", "stage": "AddConstant", "params": {"valu": 1}}]})
    with pytest.raises(ValueError, match=r"unknown pipeline keys \['stepz'\]"):
        r3.Pipeline.from_dict({"steps": [], "stepz": []})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        r3.Pipeline.load(tmp_path / "bad.json")


def test_repr_shows_non_defaults():
    """repr lists only changed parameters."""
    assert repr(AddConstant(2.0)) == "AddConstant(value=2.0)"
    assert "AddConstant()" in repr(r3.Pipeline([AddConstant()]))


def test_default_pipeline_with_the_rendering_weights_ends_with_the_support_check():
    """The default weights render: the support check follows them; the first default's weights need none."""
    import restore3d as r3
    pipe = r3.default_pipeline()
    assert [n for n, _ in pipe.steps] == ["background", "psf", "rl", "refiner", "support"]
    assert pipe["refiner"].weights == "pretrained-render" and pipe["refiner"].renders
    assert [n for n, _ in r3.default_pipeline(refiner="pretrained").steps] == ["background", "psf", "rl", "refiner"]
    assert r3.default_pipeline(refiner=False)["refiner"] == "passthrough"
    with pytest.raises(ValueError, match="refiner must be True, False or one of"):
        r3.default_pipeline(refiner="best")
