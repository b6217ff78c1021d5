"""The napari plugin: plain functions always; manifest, reader/writer with napari installed; the widget where Qt starts.

The widget runs on napari's headless ``ViewerModel`` under Qt's offscreen
platform (no display, no OpenGL needed: the widget never draws the canvas).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import restore3d as r3
from restore3d import io
from restore3d.napari import logic

SP = (0.3, 0.1, 0.1)


@pytest.fixture(scope="module")
def sim():
    return r3.simulate.simulate_beads((16, 64, 64), SP, n_beads=8, flux=8000, seed=2)


# ---------------------------------------------------------------------------- plain functions
def test_options_build_the_pipeline_they_say():
    pipe = logic.build_pipeline(logic.RestoreOptions(background="percentile", iterations=5, refiner="none",
                                                     fit_beads=True))
    assert [name for name, _ in pipe.steps] == ["background", "psf", "rl", "fit"]
    assert pipe["rl"].iterations == 5 and pipe["background"].method == "percentile"
    assert logic.pipeline_label(pipe) == "background>psf>rl(5)>fit"
    layer_psf = logic.build_pipeline(logic.RestoreOptions(psf="layer", background="none", refiner="none"))
    assert [name for name, _ in layer_psf.steps] == ["rl"]
    for shipped in r3.refiner.SHIPPED:
        pipe = logic.build_pipeline(logic.RestoreOptions(refiner=shipped))
        assert pipe["refiner"].weights == shipped and pipe["refiner"].checkpoint_path.exists()


@pytest.mark.parametrize("bad,match", [
    (dict(background="median"), "background must be one of"),
    (dict(psf="guess"), "psf must be 'estimate' or 'layer'"),
    (dict(iterations=-1), "iterations must be a whole number"),
    (dict(refiner="/nope/model.json"), "no such file"),
    (dict(background="none", psf="layer", iterations=0, refiner="none"), "nothing to run"),
])
def test_bad_options_are_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match):
        logic.build_pipeline(logic.RestoreOptions(**bad))


def test_restore_steps_yields_each_step_then_the_result(sim):
    """Progress before each step, the result at the end, layers with the source's scale and a telling name."""
    steps = logic.restore_steps(sim.raw, SP, logic.RestoreOptions(refiner="none"))
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    assert seen == [("background", 0, 3), ("psf", 1, 3), ("rl", 2, 3)]
    layers = logic.result_layers(result, "stack")
    (data, attrs, kind), (psf, psf_attrs, _) = layers[:2]
    assert kind == "image" and data.shape == sim.raw.shape and attrs["scale"] == SP
    assert attrs["name"] == "stack restored (background>psf>rl(10))"
    assert attrs["metadata"]["restore3d_pipeline"]["steps"][2]["params"]["iterations"] == 10
    assert "PSF FWHM z/y/x" in psf_attrs["name"] and len(psf_attrs["metadata"]["fwhm_um"]) == 3
    assert attrs["metadata"]["restore3d_status"].startswith("restored in")


def test_restore_steps_checks_before_any_work(sim):
    with pytest.raises(ValueError, match="no PSF layer"):
        next(logic.restore_steps(sim.raw, SP, logic.RestoreOptions(psf="layer")))
    with pytest.raises(ValueError, match="3D stack"):
        next(logic.restore_steps(sim.raw[0], SP, logic.RestoreOptions(refiner="none")))
    with pytest.raises(ValueError, match="spacing"):
        next(logic.restore_steps(sim.raw, (100, 100, 100), logic.RestoreOptions(refiner="none")))


def test_fit_beads_gives_a_points_layer_with_features(sim):
    result = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()]).run(sim.raw, spacing=SP)
    points = [layer for layer in logic.result_layers(result, "s") if layer[2] == "points"]
    assert len(points) == 1
    data, attrs, _ = points[0]
    assert data.shape == (len(result.beads), 3) and attrs["scale"] == SP
    assert set(attrs["features"]) >= {"flux", "fwhm_z", "sigma_x_um"}


def test_self_check_status_line():
    result = r3.Result(np.zeros((4, 8, 8), np.float32), spacing=SP, timings={"total": 2.0},
                       info={"refiner": {"self_check": {"roundness": 0.77, "width": 1.0, "shape_passed": False,
                                                        "failed": ["roundness 0.77 outside [0.85, 1.2]"]}}})
    line = logic.status_line(result)
    assert "self-check FAILED: roundness 0.77" in line and "\n" not in line


def test_reader_layers_have_the_spacing_as_scale(tmp_path, sim):
    path = io.save(tmp_path / "s.tif", sim.raw, spacing=SP)
    (data, attrs, kind), = logic.volume_layers(path)
    assert kind == "image" and attrs["scale"] == SP and data.shape == sim.raw.shape


def test_depth_last_mat_opens_as_io_reads_it(tmp_path, sim):
    """A depth-last .mat without stored axes opens in the orientation of io.load(..., axes='yxz')."""
    import scipy.io
    path = tmp_path / "stack.mat"
    scipy.io.savemat(path, {"stack": np.transpose(sim.raw, (1, 2, 0))})
    (data, attrs, _), = logic.volume_layers(path)
    expected, _ = io.load(path, axes="yxz")
    np.testing.assert_array_equal(data, expected)
    assert attrs["metadata"]["restore3d_spacing"] is None and attrs["scale"] == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------- with napari installed
def test_manifest_validates():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(Path(logic.__file__).with_name("napari.yaml"))
    assert manifest.name == "restore3d"
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for python_name in commands.values():
        module, attr = python_name.split(":")
        if attr == "RestoreWidget":
            continue  # importing it needs Qt: tested below where Qt starts
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    assert manifest.contributions.readers[0].command == "restore3d.get_reader"


def test_reader_and_writer_round_trip_with_scale(tmp_path, sim):
    pytest.importorskip("napari")
    from restore3d.napari._io import get_reader, write_image
    path = io.save(tmp_path / "s.tif", sim.raw, spacing=SP)
    assert get_reader(str(tmp_path / "notes.txt")) is None
    (data, attrs, _), = get_reader(str(path))(str(path))
    out = write_image(str(tmp_path / "back.npz"), data, attrs)
    vol, spacing = io.load(out[0])
    np.testing.assert_array_equal(vol, sim.raw)
    assert np.allclose(spacing, SP)


def test_reader_error_is_one_notification(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from restore3d.napari import _io
    shown = []
    monkeypatch.setattr(_io, "_notify", lambda kind, message: shown.append((kind, message)))
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert _io.read(str(bad)) is None
    assert len(shown) == 1 and shown[0][0] == "error" and "\n" not in shown[0][1]


# ---------------------------------------------------------------------------- the widget, where Qt starts
def _qt_starts() -> bool:
    code = "from qtpy.QtWidgets import QApplication; QApplication([])"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def qt_app():
    pytest.importorskip("napari")
    pytest.importorskip("qtpy")
    if not _qt_starts():
        pytest.skip("Qt cannot start here, even offscreen")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy.QtWidgets import QApplication
    return QApplication.instance() or QApplication([])


def _wait(app, widget, seconds=300):
    start = time.monotonic()
    while widget.worker is not None and time.monotonic() - start < seconds:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    assert widget.worker is None, "the restoration did not finish"


@pytest.fixture
def viewer(sim):
    from napari.components import ViewerModel
    v = ViewerModel()
    v.add_image(sim.raw, scale=SP, name="beads", metadata={"restore3d_spacing": SP})
    return v


def test_widget_restores_in_a_worker_and_adds_layers(qt_app, viewer, sim):
    from restore3d.napari._widget import RestoreWidget
    w = RestoreWidget(viewer)
    assert w.image.value == "beads" and (w.dz.value, w.dy.value, w.dx.value) == SP
    w.refiner.value = "none"
    w.start()
    assert w.worker is not None  # the work runs in a thread: start() returned at once
    _wait(qt_app, w)
    restored = viewer.layers["beads restored (background>psf>rl(10))"]
    assert restored.data.shape == sim.raw.shape
    np.testing.assert_allclose(restored.scale, SP)
    assert any(layer.name.startswith("beads PSF (PSF FWHM") for layer in viewer.layers)
    assert w.status.value.startswith("restored in")


def test_widget_cancel_stops_between_steps(qt_app, viewer):
    from restore3d.napari._widget import RestoreWidget
    w = RestoreWidget(viewer)
    w.refiner.value = "none"
    w.start()
    w.cancel()
    _wait(qt_app, w)
    assert [layer.name for layer in viewer.layers] == ["beads"]
    assert w.status.value == "cancelled"


def test_widget_bad_input_is_one_line_not_a_traceback(qt_app, viewer, monkeypatch):
    from restore3d.napari import _widget
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(message))
    w = _widget.RestoreWidget(viewer)
    w.psf_source.value = "layer"
    viewer.layers.clear()
    viewer.add_image(np.zeros((16, 64, 64), np.float32), scale=SP, name="flat")
    w.image.value = "flat"
    w.psf_layer.reset_choices()
    w.psf_layer.value = "flat"
    w.dz.value = 0.3
    w.iterations.value = 0
    w.background.value = "none"
    w.refiner.value = "none"
    viewer.layers["flat"].data = np.zeros((64, 64), np.float32)
    w.start()
    assert len(shown) == 1 and "\n" not in shown[0] and w.status.value.startswith("error:")
    assert w.worker is None


def test_widget_saves_and_loads_the_cli_pipeline_json(qt_app, viewer, tmp_path):
    from restore3d.napari._widget import RestoreWidget
    w = RestoreWidget(viewer)
    w.iterations.value = 7
    w.refiner.value = "none"
    w.save_file.value = tmp_path / "p.json"
    w.save_button.clicked.emit()
    loaded = r3.Pipeline.load(tmp_path / "p.json")
    assert loaded["rl"].iterations == 7
    w.iterations.value = 3
    w.pipeline_file.value = tmp_path / "p.json"
    w.load_button.clicked.emit()
    assert w.pipeline()["rl"].iterations == 7
