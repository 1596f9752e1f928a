"""mace_lr_eval_configs: evaluate a model on an extxyz file and write its predictions."""

from __future__ import annotations

import mace  # noqa: F401  (mace before e3nn)
import ase.io
import numpy as np
import pytest
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from e3nn.util import jit

from mace_lr.cli import eval_configs
from model_helpers import batch_dict, lr_model, nacl_crystal, tiny_backbone, water_cluster


@pytest.fixture
def structures(tmp_path):
    frames = [water_cluster(seed=2, charge=1.0), nacl_crystal(), water_cluster(seed=5, charge=0.0)]
    path = tmp_path / "configs.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path, ase.io.read(path, index=":")  # positions as written (8 decimals)


def reference(model, frames) -> list[dict]:
    """The model evaluated on all structures in one batch, split per structure."""
    batch = batch_dict(frames, model)
    out = model(batch, compute_stress=True, compute_bec=True)
    ptr = batch["ptr"].numpy()
    graph = {k: out[k].detach().numpy() for k in ("energy", "stress", "dipole")}
    atom = {k: out[k].detach().numpy() for k in ("forces", "charges", "bec")}
    return [{**{k: v[g] for k, v in graph.items()}, **{k: v[ptr[g]: ptr[g + 1]] for k, v in atom.items()}}
            for g in range(len(frames))]


@pytest.mark.parametrize("compiled", [False, True])
def test_writes_every_output_of_a_long_range_model(structures, tmp_path, compiled, capsys):
    configs, frames = structures
    model = lr_model()
    model_path = tmp_path / "lr.model"
    if compiled:
        torch.jit.save(jit.compile(model), model_path)
    else:
        torch.save(model, model_path)
    output = tmp_path / "out.xyz"
    eval_configs.main([f"--configs={configs}", f"--model={model_path}", f"--output={output}", "--compute_stress",
                       "--compute_bec", "--info_prefix=LR_", "--batch_size=2"])
    assert "3/3" in capsys.readouterr().err  # tqdm progress bar
    written = ase.io.read(output, index=":")
    assert len(written) == 3
    for atoms, original, expected in zip(written, frames, reference(model, frames)):  # batches of 2 vs 3
        n = len(atoms)
        assert atoms.info["LR_energy"] == pytest.approx(float(expected["energy"]), abs=1e-8)
        np.testing.assert_allclose(atoms.arrays["LR_forces"], expected["forces"], atol=1e-7)
        np.testing.assert_allclose(atoms.info["LR_stress"], full_3x3_to_voigt_6_stress(expected["stress"]), atol=1e-8)
        np.testing.assert_allclose(atoms.arrays["LR_charges"], expected["charges"], atol=1e-8)
        np.testing.assert_allclose(atoms.info["LR_dipole"], expected["dipole"], atol=1e-8)
        assert atoms.arrays["LR_bec"].shape == (n, 9)
        np.testing.assert_allclose(atoms.arrays["LR_bec"], expected["bec"].reshape(n, 9), atol=1e-7)
        assert "LR_electrostatic_energy" in atoms.info
        total_charge = original.info.get("total_charge", 0.0)
        assert expected["charges"].sum() == pytest.approx(total_charge, abs=1e-10)  # exact in memory
        # extxyz keeps 8 decimals: each written charge is off by at most 5e-9, so the sum by n * 5e-9
        assert atoms.arrays["LR_charges"].sum() == pytest.approx(total_charge, abs=n * 5e-9 + 1e-12)
        assert abs(atoms.arrays["LR_charges"]).max() > 1e-2  # charges are really non-trivial
        if not original.pbc.any():  # translating everything moves mu by Q d: sum_i Z*_i = Q 1
            bec_sum = atoms.arrays["LR_bec"].reshape(n, 3, 3).sum(axis=0)
            np.testing.assert_allclose(bec_sum, total_charge * np.eye(3), atol=1e-7)


def test_plain_mace_model_gets_energy_and_forces_only(structures, tmp_path):
    configs, frames = structures
    model = tiny_backbone(atomic_numbers=(1, 8, 11, 17))
    model_path = tmp_path / "plain.model"
    torch.save(model, model_path)
    output = tmp_path / "out.xyz"
    eval_configs.main([f"--configs={configs}", f"--model={model_path}", f"--output={output}", "--no_progress"])
    written = ase.io.read(output, index=":")
    batch = batch_dict(frames, model)
    out = model(batch)
    ptr = batch["ptr"].numpy()
    for g, atoms in enumerate(written):
        assert atoms.info["MACE_energy"] == pytest.approx(float(out["energy"][g]), abs=1e-8)
        forces = out["forces"].detach().numpy()[ptr[g]: ptr[g + 1]]
        np.testing.assert_allclose(atoms.arrays["MACE_forces"], forces, atol=1e-7)
        assert "MACE_charges" not in atoms.arrays and "MACE_dipole" not in atoms.info
    with pytest.raises(SystemExit):
        eval_configs.main([f"--configs={configs}", f"--model={model_path}", f"--output={output}", "--compute_bec"])
