import logging
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """The folder of real measured data; tests using it skip when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} not present")
    return DATA


@pytest.fixture(scope="session")
def small_sim():
    """A small fixed-seed bead volume with ambient light and noise."""
    from restore3d.simulate import simulate_beads
    return simulate_beads((24, 96, 96), (0.3, 0.1, 0.1), n_beads=25, flux=6000.0, seed=11)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)


SP_GRID = (0.3, 0.1, 0.1)


def truth_table(positions, inside=None, flux=1000.0, spacing=SP_GRID):
    """A bead table at the given (N, 3) voxel positions."""
    from restore3d.beads import new_table, set_positions
    t = set_positions(new_table(len(positions)), positions, spacing)
    t["flux"] = flux
    t["inside"] = True if inside is None else inside
    return t


@pytest.fixture(scope="module")
def scene():
    """32 well-separated beads (a jittered 2 x 4 x 4 grid) and their target, (24, 96, 96) at (0.3, 0.1, 0.1) um."""
    from restore3d.target import render_target
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid([7.0, 16.0], np.linspace(12, 84, 4), np.linspace(12, 84, 4), indexing="ij")
    pos = np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()]) + rng.uniform(-2, 2, (32, 3))
    truth = truth_table(pos, flux=rng.uniform(500, 2000, 32))
    return truth, render_target(truth, (24, 96, 96), SP_GRID, fwhm_um=0.25)
