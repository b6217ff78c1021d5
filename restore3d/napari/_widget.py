"""The restore widget: choose the stages, run them in a worker thread, add the result layers.

A thin Qt layer over :mod:`restore3d.napari.logic`: the viewer never
freezes (the pipeline runs in a napari worker thread, one step at a time,
with a progress bar and a cancel button that stops it between steps), and
errors show as one-line notifications, as on the command line.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox)

from .logic import (RestoreOptions, build_pipeline, layer_spacing, one_line, restore_steps, result_layers,
                    status_line)

__all__ = ["RestoreWidget"]

log = logging.getLogger(__name__)


class RestoreWidget(Container):
    """Plugins > restore3d > Restore beads.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose image layers it restores (napari passes it).
    """

    def __init__(self, viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.worker = None
        self.last_result = None
        self._loaded_pipeline = None
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.dz = FloatSpinBox(label="dz (um)", value=0.3, min=0.005, max=20.0, step=0.01)
        self.dy = FloatSpinBox(label="dy (um)", value=0.1, min=0.005, max=20.0, step=0.005)
        self.dx = FloatSpinBox(label="dx (um)", value=0.1, min=0.005, max=20.0, step=0.005)
        self.background = ComboBox(label="background", choices=["wavelet", "rolling_ball", "percentile", "none"],
                                   value="wavelet")
        self.psf_source = ComboBox(label="PSF", choices=["estimate", "layer"], value="estimate")
        self.psf_layer = ComboBox(label="PSF layer", choices=self._image_layers)
        self.iterations = SpinBox(label="RL iterations", value=10, min=0, max=500)
        self.refiner = ComboBox(label="refiner", choices=["pretrained-render", "pretrained", "none", "checkpoint"],
                                value="pretrained-render")
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.json *.pt")
        self.fit_beads = CheckBox(label="fit beads", value=False)
        self.pipeline_file = FileEdit(label="pipeline JSON", mode="r", filter="*.json")
        self.load_button = PushButton(text="Load pipeline")
        self.save_file = FileEdit(label="save as", mode="w", filter="*.json")
        self.save_button = PushButton(text="Save pipeline")
        self.run_button = PushButton(text="Restore")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="")
        self.extend([self.image, self.dz, self.dy, self.dx, self.background, self.psf_source, self.psf_layer,
                     self.iterations, self.refiner, self.checkpoint, self.fit_beads, self.pipeline_file,
                     self.load_button, self.save_file, self.save_button, self.run_button, self.cancel_button,
                     self.progress, self.status])
        self.image.changed.connect(self._take_spacing)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._save_pipeline)
        self.load_button.changed.connect(self._load_pipeline)
        for widget in (self.background, self.psf_source, self.iterations, self.refiner, self.fit_beads):
            widget.changed.connect(self._forget_loaded)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self._take_spacing()

    # ------------------------------------------------------------------ choices
    def _image_layers(self, _widget=None):
        from napari.layers import Image
        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh(self, _event=None):
        self.image.reset_choices()
        self.psf_layer.reset_choices()
        self._take_spacing()

    def _take_spacing(self, _value=None):
        """The selected layer's scale as the spacing (when the file stored one)."""
        name = self.image.value
        if name is None or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        known = layer.metadata.get("restore3d_spacing", ())
        if known is None:  # opened without a stored voxel size: keep what the user typed
            return
        try:
            self.dz.value, self.dy.value, self.dx.value = layer_spacing(layer.scale)
        except ValueError:
            pass

    def _forget_loaded(self, _value=None):
        self._loaded_pipeline = None

    def options(self) -> RestoreOptions:
        """The stages chosen in the widget."""
        refiner = self.refiner.value
        if refiner == "checkpoint":
            refiner = str(self.checkpoint.value)
        return RestoreOptions(background=self.background.value, psf=self.psf_source.value,
                              iterations=int(self.iterations.value), refiner=refiner,
                              fit_beads=bool(self.fit_beads.value))

    def pipeline(self):
        """The pipeline that will run: a loaded JSON one, or the widget's choices."""
        return self._loaded_pipeline if self._loaded_pipeline is not None else build_pipeline(self.options())

    # ------------------------------------------------------------------ pipeline files
    def _save_pipeline(self, _value=None):
        try:
            path = Path(str(self.save_file.value))
            if path.suffix.lower() != ".json":
                raise ValueError(f"{path}: save the pipeline as a .json file")
            self.pipeline().save(path)
            self._say(f"pipeline saved to {path}")
        except Exception as exc:  # shown, never raised into Qt
            self._error(exc)

    def _load_pipeline(self, _value=None):
        from ..pipeline import Pipeline
        try:
            self._loaded_pipeline = Pipeline.load(Path(str(self.pipeline_file.value)))
            self._say(f"pipeline loaded: {len(self._loaded_pipeline)} steps (changing a stage above forgets it)")
        except Exception as exc:
            self._error(exc)

    # ------------------------------------------------------------------ running
    def start(self, _value=None):
        """Check the inputs, then restore the selected layer in a worker thread."""
        from napari.qt.threading import create_worker
        try:
            name = self.image.value
            if name is None:
                raise ValueError("no image layer: open a bead stack first")
            layer = self.viewer.layers[name]
            spacing = (float(self.dz.value), float(self.dy.value), float(self.dx.value))
            pipeline = self.pipeline()
            psf = None
            if self._loaded_pipeline is None and self.psf_source.value == "layer":
                if self.psf_layer.value is None:
                    raise ValueError("PSF 'layer' chosen but there is no PSF layer: open the measured PSF")
                psf = np.asarray(self.viewer.layers[self.psf_layer.value].data)
            steps = restore_steps(np.asarray(layer.data), spacing, pipeline, psf=psf)
            first = next(steps)  # every check runs here, before any work and before the thread starts
        except StopIteration as done:  # a pipeline without an active step finishes at once
            self._finish(done.value, name, pipeline)
            return
        except Exception as exc:
            self._error(exc)
            return

        def work():
            yield first
            result = yield from steps
            return result

        self.progress.max = max(1, first[2])
        self.progress.value = 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._say(f"running {first[0]} (1/{first[2]})")
        self.worker = create_worker(work, _start_thread=False)
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(lambda result: self._finish(result, name, pipeline))
        self.worker.errored.connect(self._error)
        self.worker.aborted.connect(lambda: self._say("cancelled"))
        self.worker.finished.connect(self._idle)
        self.worker.start()

    def _on_step(self, step):
        name, index, count = step
        self.progress.value = index
        self._say(f"running {name} ({index + 1}/{count})")

    def cancel(self, _value=None):
        """Stop the running restoration after its current step."""
        if self.worker is not None:
            self.worker.quit()
            self._say("cancelling after the current step...")

    def _finish(self, result, source_name, pipeline):
        self.last_result = result
        for data, attrs, kind in result_layers(result, source_name, pipeline):
            getattr(self.viewer, f"add_{kind}")(data, **attrs)
        self.progress.value = self.progress.max
        self._say(status_line(result))

    def _idle(self):
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self.worker = None

    # ------------------------------------------------------------------ messages
    def _say(self, text):
        self.status.value = text
        log.info("%s", text)

    def _error(self, exc):
        from napari.utils.notifications import show_error
        message = one_line(exc)
        self.status.value = f"error: {message}"
        show_error(message)
        self._idle()
