import numpy as np
import pytest

from restore3d import io

SP = (0.3, 0.1, 0.12)


@pytest.fixture
def vol():
    return np.random.default_rng(0).random((5, 7, 9)).astype(np.float32)


@pytest.mark.parametrize("name", ["v.mat", "v.tif", "v.tiff", "v.ome.tif", "v.npz"])
def test_round_trip_keeps_data_and_spacing(tmp_path, vol, name):
    """Every format with metadata returns the same volume and spacing."""
    path = io.save(tmp_path / name, vol, spacing=SP)
    out, sp = io.load(path)
    np.testing.assert_array_equal(out, vol)
    assert out.dtype == np.float32
    np.testing.assert_allclose(sp, SP, rtol=1e-6)


def test_npy_has_no_spacing(tmp_path, vol):
    """.npy holds only the array: spacing comes back as None."""
    out, sp = io.load(io.save(tmp_path / "v.npy", vol))
    np.testing.assert_array_equal(out, vol)
    assert sp is None


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_matlab_depth_last(tmp_path, vol, version):
    """A (y, x, z) MATLAB file named voxel loads with axes='yxz' into (z, y, x)."""
    path = tmp_path / "stack.mat"
    io.save(path, vol, axes="yxz", variable="voxel", mat_version=version)
    out, sp = io.load(path, axes="yxz")
    np.testing.assert_array_equal(out, vol)
    assert sp is None


def test_matlab_v73_written_as_matlab_would(tmp_path, vol):
    """v7.3 files are HDF5 with a MATLAB header and column-major data, as MATLAB writes them."""
    import h5py
    path = io.save(tmp_path / "s.mat", vol, axes="yxz", variable="voxel", mat_version="7.3", spacing=SP)
    assert open(path, "rb").read(10) == b"MATLAB 7.3"
    with h5py.File(path) as fh:
        # MATLAB size (Y, X, Z) appears reversed to HDF5
        assert fh["voxel"].shape == (5, 9, 7)
        assert fh["voxel"].attrs["MATLAB_class"] == b"single"
    out, sp = io.load(path)  # the stored axes are used
    np.testing.assert_array_equal(out, vol)
    np.testing.assert_allclose(sp, SP)


def test_matlab_file_from_scipy_user(tmp_path, vol):
    """A plain user .mat (depth last, no metadata) loads with the right transposition."""
    from scipy.io import savemat
    savemat(tmp_path / "u.mat", {"voxel": np.transpose(vol, (1, 2, 0)).astype(np.float64), "note": np.ones(3)})
    out, sp = io.load(tmp_path / "u.mat", axes="yxz")
    np.testing.assert_allclose(out, vol)
    assert sp is None


def test_tiff_is_imagej_with_micrometres(tmp_path, vol):
    """Written TIFFs carry ImageJ metadata (spacing, unit) and resolution tags for Fiji and napari."""
    import tifffile
    path = io.save(tmp_path / "v.tif", vol, spacing=SP)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej
        assert tf.imagej_metadata["spacing"] == pytest.approx(0.3)
        assert tf.imagej_metadata["unit"] == "um"
        num, den = tf.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.12, rel=1e-6)


@pytest.mark.parametrize("axes", ["zxy", "xyz", "yzx"])
def test_axis_permutations_round_trip(tmp_path, vol, axes):
    """Saving with an axis order and loading with the same order is the identity."""
    path = io.save(tmp_path / "v.npy", vol, axes=axes)
    assert np.load(path).shape == tuple(vol.shape["zyx".index(a)] for a in axes)
    out, _ = io.load(path, axes=axes)
    np.testing.assert_array_equal(out, vol)


def test_integer_data_become_float32(tmp_path):
    """uint16 stacks load as float32 with the same values."""
    data = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    io.save(tmp_path / "u.tif", data, dtype=np.uint16)
    out, _ = io.load(tmp_path / "u.tif")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


def test_atomic_save_leaves_no_temporary(tmp_path, vol):
    """A save leaves exactly the destination file in the folder."""
    io.save(tmp_path / "a.tif", vol)
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


# ------------------------------------------------------------------ bad input
def test_unknown_extension(tmp_path, vol):
    """An unknown extension names the file and the supported formats."""
    with pytest.raises(ValueError, match=r"v\.png: unknown file extension '\.png'"):
        io.save(tmp_path / "v.png", vol)
    (tmp_path / "v.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown file extension"):
        io.load(tmp_path / "v.png")


def test_missing_file(tmp_path):
    """A missing file says so."""
    with pytest.raises(ValueError, match="no such file"):
        io.load(tmp_path / "nothing.tif")


def test_no_3d_array(tmp_path):
    """A .mat without any 3D array is rejected, listing what it holds."""
    from scipy.io import savemat
    savemat(tmp_path / "a.mat", {"a": np.ones((3, 4)), "b": np.ones(5)})
    with pytest.raises(ValueError, match=r"a\.mat: no 3D array"):
        io.load(tmp_path / "a.mat")


def test_several_candidates_listed(tmp_path, vol):
    """Several 3D variables are listed and variable= picks one."""
    from scipy.io import savemat
    savemat(tmp_path / "two.mat", {"first": vol, "second": vol * 2})
    with pytest.raises(ValueError, match=r"several 3D arrays \['first', 'second'\].*variable=NAME"):
        io.load(tmp_path / "two.mat")
    out, _ = io.load(tmp_path / "two.mat", variable="second")
    np.testing.assert_allclose(out, vol * 2)
    with pytest.raises(ValueError, match="no variable 'third'"):
        io.load(tmp_path / "two.mat", variable="third")


@pytest.mark.parametrize("shape,match", [((8, 9), "2D.*single plane"), ((2, 3, 4, 5), "4D.*select one channel")])
def test_wrong_dimensionality(tmp_path, shape, match):
    """2D and 4D data are rejected with what to do."""
    np.save(tmp_path / "a.npy", np.ones(shape, np.float32))
    with pytest.raises(ValueError, match=match):
        io.load(tmp_path / "a.npy")
    import tifffile
    tifffile.imwrite(tmp_path / "a.tif", np.ones(shape, np.float32), photometric="minisblack")
    with pytest.raises(ValueError, match=match):
        io.load(tmp_path / "a.tif")


def test_non_numeric(tmp_path):
    """Complex or boolean data are rejected."""
    np.save(tmp_path / "c.npy", np.ones((2, 3, 4), np.complex64))
    with pytest.raises(ValueError, match="complex64, not real numbers"):
        io.load(tmp_path / "c.npy")
    np.save(tmp_path / "b.npy", np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="bool"):
        io.load(tmp_path / "b.npy")


@pytest.mark.parametrize("name", ["bad.mat", "bad.tif", "bad.npy"])
def test_corrupt_files(tmp_path, name):
    """Corrupt files raise a one-line ValueError naming the file."""
    (tmp_path / name).write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + ": not a readable"):
        io.load(tmp_path / name)


def test_bad_axes(tmp_path, vol):
    """An axes string that is not a permutation of zyx is rejected."""
    io.save(tmp_path / "v.npy", vol)
    with pytest.raises(ValueError, match="permutation of 'zyx'"):
        io.load(tmp_path / "v.npy", axes="yxx")
    with pytest.raises(ValueError, match="TIFF stacks are written as"):
        io.save(tmp_path / "v.tif", vol, axes="yxz")


def test_table_round_trip(tmp_path):
    """Bead tables go to CSV with a header and come back; columns nobody filled (all NaN) are left out."""
    from restore3d.simulate import simulate_beads
    sim = simulate_beads((8, 32, 32), (0.3, 0.1, 0.1), n_beads=4, seed=0)
    path = io.write_table(tmp_path / "beads.csv", sim.truth)
    back = io.read_table(path)
    assert {"z", "y", "x", "z_um", "flux", "inside"} <= set(back.dtype.names)
    assert "fwhm_z" not in back.dtype.names  # a simulation's truth has no measured widths
    np.testing.assert_allclose(back["x"], sim.truth["x"], rtol=1e-5)
