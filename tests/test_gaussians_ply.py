"""3DGS .ply export/import: round trip, the standard layout, and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from robodream.errors import CheckpointError, RobodreamError
from robodream.gaussians.ply import PlyFormatError, load_ply, save_ply
from robodream.gaussians.scene import GaussianParams


def random_params(n: int, degree: int, seed: int = 0) -> GaussianParams:
    g = torch.Generator().manual_seed(seed)
    return GaussianParams(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                          log_scales=torch.randn(n, 3, generator=g) - 4, opacity_logits=torch.randn(n, generator=g),
                          sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_exact(tmp_path, degree):
    g = random_params(37, degree)
    save_ply(tmp_path / "s.ply", g)
    back = load_ply(tmp_path / "s.ply")
    for name, t in g.tensors().items():
        torch.testing.assert_close(getattr(back, name), t, rtol=0, atol=0, msg=name)


def test_standard_3dgs_layout(tmp_path):
    save_ply(tmp_path / "s.ply", random_params(5, 1))
    raw = (tmp_path / "s.ply").read_bytes()
    header = raw[: raw.index(b"end_header")].decode()
    assert "format binary_little_endian 1.0" in header and "element vertex 5" in header
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
                     + ["rot_0", "rot_1", "rot_2", "rot_3"])
    assert all(f"property float {p}" in header for p in props)
    # f_rest is channel-major: red's 3 higher-band coefficients first
    g = random_params(5, 1)
    save_ply(tmp_path / "t.ply", g)
    v = PlyData.read(str(tmp_path / "t.ply"))["vertex"]
    np.testing.assert_array_equal(v["f_rest_1"], g.sh[:, 2, 0].numpy())
    np.testing.assert_array_equal(v["f_rest_3"], g.sh[:, 1, 1].numpy())


def test_reads_ascii_and_double(tmp_path):
    g = random_params(4, 0)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = [g.means, g.sh[:, 0], g.opacity_logits[:, None], g.log_scales, g.quats]
    data = torch.cat(cols, 1).double().numpy()
    arr = np.empty(4, dtype=[(n, "f8") for n in names])
    for i, n in enumerate(names):
        arr[n] = data[:, i]
    PlyData([PlyElement.describe(arr, "vertex")], text=True).write(str(tmp_path / "a.ply"))
    back = load_ply(tmp_path / "a.ply")
    torch.testing.assert_close(back.means, g.means)
    torch.testing.assert_close(back.sh, g.sh)


def _write_vertex(path, names, n=3, value=0.5):
    arr = np.full(n, value, dtype=[(name, "f4") for name in names])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def test_malformed_files_give_clear_errors(tmp_path, monkeypatch):
    from robodream.gaussians import ply

    messages = []
    real_init = ply.PlyFormatError.__init__

    def record(self, msg):  # every message: one line naming the file
        messages.append(msg)
        real_init(self, msg)

    monkeypatch.setattr(ply.PlyFormatError, "__init__", record)

    with pytest.raises(PlyFormatError, match="does not exist"):
        load_ply(tmp_path / "missing.ply")
    (tmp_path / "junk.ply").write_bytes(b"this is not a ply file\x00\x01")
    with pytest.raises(PlyFormatError, match="not a readable PLY"):
        load_ply(tmp_path / "junk.ply")
    save_ply(tmp_path / "ok.ply", random_params(50, 2))
    raw = (tmp_path / "ok.ply").read_bytes()
    (tmp_path / "truncated.ply").write_bytes(raw[: len(raw) - 300])
    with pytest.raises(PlyFormatError, match="truncated.ply"):
        load_ply(tmp_path / "truncated.ply")
    _write_vertex(tmp_path / "cloud.ply", ["x", "y", "z", "red", "green", "blue"])  # a plain point cloud
    with pytest.raises(PlyFormatError, match="missing properties f_dc_0"):
        load_ply(tmp_path / "cloud.ply")
    base = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    _write_vertex(tmp_path / "rest.ply", base + [f"f_rest_{i}" for i in range(5)])
    with pytest.raises(PlyFormatError, match="5 f_rest properties"):
        load_ply(tmp_path / "rest.ply")
    _write_vertex(tmp_path / "nan.ply", base, value=float("nan"))
    with pytest.raises(PlyFormatError, match="non-finite"):
        load_ply(tmp_path / "nan.ply")
    arr = np.zeros(2, dtype=[("a", "f4")])
    PlyData([PlyElement.describe(arr, "face")]).write(str(tmp_path / "noverts.ply"))
    with pytest.raises(PlyFormatError, match="no 'vertex' element"):
        load_ply(tmp_path / "noverts.ply")
    (tmp_path / "header.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
                                          b"property float x\nproperty float y\nend_header\n\x00\x00")
    with pytest.raises(PlyFormatError, match="header.ply"):
        load_ply(tmp_path / "header.ply")
    assert len(messages) == 8
    for m in messages:
        assert "\n" not in m and ".ply" in m, m
    assert issubclass(PlyFormatError, CheckpointError) and issubclass(PlyFormatError, RobodreamError)


def test_empty_ply_round_trip(tmp_path):
    """A scene with no Gaussians is a valid file (and renders the background)."""
    g = random_params(0, 1)
    save_ply(tmp_path / "empty.ply", g)
    back = load_ply(tmp_path / "empty.ply")
    assert back.n == 0 and back.sh.shape == (0, 4, 3)
