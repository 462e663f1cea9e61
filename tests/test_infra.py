"""The house's ground floor: CLI dispatch and errors, atomic writes, normalizer, the policy queue protocol."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mepoly_il.cli import main as cli_main
from mepoly_il.data.normalize import Normalizer, minmax_bounds
from mepoly_il.errors import UserError
from mepoly_il.policies.base import BasePolicy, check_horizons
from mepoly_il.utils import atomic_path


def test_help_lists_every_command_group(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("data", "fit", "eval", "rl", "bench"):
        assert f"  {group} " in out


def test_console_script_unknown_group_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "mepoly_il", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown command group 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_error_becomes_one_line_and_exit_2(capsys):
    assert cli_main(["bench", "no-such-bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown benchmark 'no-such-bench'" in err[0]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("killed midway")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_refuses_existing_output_without_overwrite(tmp_path):
    final = tmp_path / "out.json"
    final.write_text("old")
    with pytest.raises(UserError, match="already exists.*--overwrite"), atomic_path(final):
        pass
    with atomic_path(final, overwrite=True) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"


def test_minmax_bounds_margin_and_constant_dims():
    lo, hi = minmax_bounds([0.0, 5.0], [10.0, 5.0], margin=0.1)
    np.testing.assert_allclose(lo, [-1.0, 4.5])
    np.testing.assert_allclose(hi, [11.0, 5.5])


def test_normalizer_roundtrip_and_range():
    norm = Normalizer(3)
    data = torch.randn(100, 3) * torch.tensor([1.0, 10.0, 0.1]) + 4.0
    lo, hi = minmax_bounds(data.min(0).values.numpy(), data.max(0).values.numpy(), margin=0.02)
    norm.set_bounds(lo, hi)
    y = norm.normalize(data)
    assert y.min() > -1.0 and y.max() < 1.0
    assert y.min() < -0.9 and y.max() > 0.9
    torch.testing.assert_close(norm.unnormalize(y), data, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hi > lo"):
        norm.set_bounds(hi, lo)


def test_check_horizons_rule():
    check_horizons(2, 8, 16)
    with pytest.raises(ValueError, match="obs_horizon \\+ act_horizon - 1 <= pred_horizon"):
        check_horizons(2, 16, 16)


class _CountingPolicy(BasePolicy):
    """Chunk value k = number of generate calls; action index t inside the chunk goes in the last dim."""

    def __init__(self):
        super().__init__(obs_dim=2, act_dim=2, obs_horizon=2, act_horizon=3, pred_horizon=6)
        self.calls = 0
        self.seen = []

    def generate(self, obs_norm):
        self.calls += 1
        self.seen.append(obs_norm.clone())
        b = obs_norm.shape[0]
        t = torch.arange(self.pred_horizon, dtype=torch.float32) / 10.0
        chunk = torch.stack([torch.full_like(t, self.calls / 10.0), t], dim=-1)
        return chunk.expand(b, -1, -1)


def test_select_action_replans_every_act_horizon_and_executes_the_right_slice():
    pol = _CountingPolicy()
    pol.reset()
    acts = [pol.select_action(torch.full((4, 2), float(i) / 10)) for i in range(7)]
    assert pol.calls == 3  # steps 0, 3, 6
    # Executed slice starts at To-1 = 1: the second action of the chunk.
    torch.testing.assert_close(acts[0][0], torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(acts[2][0], torch.tensor([0.1, 0.3]))
    torch.testing.assert_close(acts[3][0], torch.tensor([0.2, 0.1]))
    # First call: the history is the first obs repeated; at step 3 it is obs 2 and 3.
    torch.testing.assert_close(pol.seen[0][0, :, 0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(pol.seen[1][0, :, 0], torch.tensor([0.2, 0.3]))
    pol.reset()
    pol.select_action(torch.zeros(4, 2))
    assert pol.calls == 4


def test_select_action_rejects_wrong_obs_dim():
    pol = _CountingPolicy()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        pol.select_action(torch.zeros(4, 3))


def test_demo_poly_quick_writes_png_and_table(tmp_path):
    out = tmp_path / "poly"
    assert cli_main(["demo", "poly", "--quick", "--out", str(out)]) == 0
    for name in ("density_fit.png", "density_fit.md", "density_fit.csv"):
        assert (out / name).stat().st_size > 0, name
    assert "| lemniscate |" in (out / "density_fit.md").read_text()
