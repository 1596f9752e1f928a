"""The README's main job (mace_lr_demo) runs end to end and prints correct Madelung constants."""

import re

from mace_lr.cli import demo


def test_madelung_table_is_within_1e_6():
    for name, method, value, reference in demo.madelung_table():
        assert abs(value / reference - 1) < 1e-6, (name, method, value)


def test_quick_demo_trains_both_models_and_plots(tmp_path, capsys):
    assert demo.main(["-o", str(tmp_path), "--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("short-range MACE", "MACE-LR charges"):
        row = re.search(rf"^\s+{label}\s+([\d.]+|nan)\s+([\d.]+|nan)\s+([\d.]+)\s+([\d.]+|nan)$", out, re.MULTILINE)
        assert row, f"no error row for {label} in:\n{out}"
        assert float(row.group(3)) > 0.0  # force MAE computed
    assert (tmp_path / "none_compiled.model").exists()
    assert (tmp_path / "charges_compiled.model").exists()
    assert (tmp_path / "demo.png").stat().st_size > 10_000
