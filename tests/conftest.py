import logging
from pathlib import Path

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
