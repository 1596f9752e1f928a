"""The README's main job (mace_lr_demo) runs and prints correct Madelung constants."""

from mace_lr.cli import demo


def test_madelung_table_is_within_1e_6():
    for name, method, value, reference in demo.madelung_table():
        assert abs(value / reference - 1) < 1e-6, (name, method, value)


def test_demo_writes_data_sets_that_mace_reads(tmp_path, capsys):
    assert demo.main(["-o", str(tmp_path), "--n-configs", "2"]) == 0
    out = capsys.readouterr().out
    assert "random_charges.xyz: 2 structures read back" in out
    assert "dimers.xyz: 2 structures read back" in out
    assert "--energy_key=REF_energy" in out
