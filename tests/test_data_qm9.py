"""QM9 graphs rebuilt from the qm9pack table: PyG's fields, features, units and molecule order.

All checks use the real shared data (the first 100 molecules, as the QM9 experiment does).
"""
import gzip
import sys

import pandas as pd
import pytest
import torch

from repro.data import qm9_csv
from repro.data.qm9 import QM9CSV, load_qm9
from repro.data.qm9_csv import HAR2EV, TARGET_INDEX, read_uncharacterized
from repro.data.qm9_graphs import GraphBuilder
from repro.errors import UserError

N = 100
VALENCE = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}


@pytest.fixture(scope="module")
def ds(data_dir):
    return load_qm9(data_dir, max_molecules=N)


@pytest.fixture(scope="module")
def ds_sanitized(data_dir):
    return load_qm9(data_dir, max_molecules=N, features="sanitized")


@pytest.fixture(scope="module")
def table(data_dir):
    """The first rows of the real table, as pandas reads them (for cross-checks)."""
    path = qm9_csv.find_csv_files(data_dir)[0]
    return pd.read_csv(path, nrows=N + 3)


def test_first_three_molecules_like_pyg(ds):
    assert isinstance(ds, QM9CSV) and len(ds) == N
    expect = [  # name, z, number of bonds, alpha (bohr^3), H count on the heavy atom
        ("gdb_1", [6, 1, 1, 1, 1], 4, 13.21, 4),
        ("gdb_2", [7, 1, 1, 1], 3, 9.46, 3),
        ("gdb_3", [8, 1, 1], 2, 6.31, 2),
    ]
    for i, (name, z, n_bonds, alpha, n_h) in enumerate(expect):
        d = ds[i]
        assert d.name == name and int(d.idx) == i
        assert d.z.tolist() == z and d.z.dtype == torch.long
        n = len(z)
        assert d.x.shape == (n, 11) and d.x.dtype == torch.float32
        assert d.pos.shape == (n, 3) and d.pos.dtype == torch.float32
        assert d.edge_index.shape == (2, 2 * n_bonds) and d.edge_attr.shape == (2 * n_bonds, 4)
        assert d.y.shape == (1, 19) and d.y.dtype == torch.float32
        assert d.y[0, TARGET_INDEX["alpha"]].item() == pytest.approx(alpha)
        # heavy atom first (xyz order), bonded to every H; all bonds single
        assert d.edge_index[:, : n - 1].tolist() == [[0] * (n - 1), list(range(1, n))]
        assert d.edge_attr[:, 0].eq(1).all() and d.edge_attr[:, 1:].eq(0).all()
        assert d.x[0, 10].item() == n_h and d.x[1:, 10].eq(0).all()
    assert ds[0].smiles == "[H]C([H])([H])[H]"
    assert ds[0].x[0].tolist() == [0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 4]
    assert ds[0].x[1].tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    # CH4 geometry straight from the xyz (Angstrom)
    assert ds[0].pos[0].tolist() == pytest.approx([-0.0126981359, 1.0858041578, 0.0080009958])


def test_features_consistent_on_first_100(ds, table):
    want_alpha = table.set_index("Index")["Polarizability_bohr3"]
    for d in ds:
        x, z, ei, ea = d.x, d.z, d.edge_index, d.edge_attr
        assert x[:, :5].sum(1).eq(1).all()  # one-hot H,C,N,O,F
        assert torch.equal(x[:, :5].argmax(1), torch.tensor([[1, 6, 7, 8, 9].index(v) for v in z.tolist()]))
        assert torch.equal(x[:, 5], z.float())
        assert ea.sum(1).eq(1).all()  # one-hot bond type
        # both directions, sorted by (row, col) like PyG
        key = ei[0] * len(z) + ei[1]
        assert torch.equal(key, key.sort().values) and len(set(key.tolist())) == key.numel()
        assert sorted(zip(ei[0].tolist(), ei[1].tolist())) == sorted(zip(ei[1].tolist(), ei[0].tolist()))
        # number of bonded hydrogens, and chemically valid Kekule bond orders (all neutral here)
        n_h = torch.zeros(len(z)).index_add_(0, ei[1], (z[ei[0]] == 1).float())
        assert torch.equal(x[:, 10], n_h)
        order = torch.zeros(len(z)).index_add_(0, ei[0], ea[:, :3] @ torch.tensor([1.0, 2.0, 3.0]))
        assert order.tolist() == [VALENCE[v] for v in z.tolist()], d.name
        # bonds are short, non-bonds absent: every bond < 1.6 A in these small molecules
        length = (d.pos[ei[0]] - d.pos[ei[1]]).norm(dim=1)
        assert length.max() < 1.6
        index = int(d.idx) + 1
        assert d.name == f"gdb_{index}"
        assert d.y[0, 1].item() == pytest.approx(want_alpha[index])


def test_molecule_order_skips_uncharacterized(ds, data_dir):
    want = [i for i in range(1, 104) if i not in (58, 61, 80)]
    assert [int(d.idx) + 1 for d in ds] == want
    assert ds._data.idx.tolist() == [i - 1 for i in want]
    ids = read_uncharacterized(qm9_csv.existing_file(data_dir / "qm9", "uncharacterized", ".txt"))
    assert len(ids) == 3054 and min(ids) == 58 and max(ids) == 133866


def test_targets_units_eV(ds, table):
    import torch_geometric.datasets.qm9 as pyg_qm9

    assert HAR2EV == pyg_qm9.HAR2EV
    for target, refs in qm9_csv.ATOMREFS_EV.items():
        assert list(refs) == pyg_qm9.atomrefs[target]
    y = ds[0].y[0].double()
    row = table.iloc[0]
    assert y[TARGET_INDEX["U0"]].item() == pytest.approx(-40.47893 * HAR2EV, rel=1e-7)
    assert y[TARGET_INDEX["homo"]].item() == pytest.approx(-0.3877 * HAR2EV, rel=1e-6)
    assert y[TARGET_INDEX["gap"]].item() == pytest.approx(0.5048 * HAR2EV, rel=1e-6)
    assert y[TARGET_INDEX["zpve"]].item() == pytest.approx(0.044749 * HAR2EV, rel=1e-6)
    assert y[TARGET_INDEX["r2"]].item() == pytest.approx(35.3641, rel=1e-6)
    assert y[TARGET_INDEX["cv"]].item() == pytest.approx(6.469, rel=1e-6)
    assert y[16:].tolist() == pytest.approx([row.RotA_GHz, row.RotB_GHz, row.RotC_GHz], rel=1e-6)
    # atomization energies: total minus PyG's atomrefs (one C, four H); PyG's value is -17.1722 eV
    u0_atom = -40.47893 * HAR2EV - (pyg_qm9.atomrefs[7][1] + 4 * pyg_qm9.atomrefs[7][0])
    assert y[TARGET_INDEX["U0_atom"]].item() == pytest.approx(u0_atom, abs=1e-3)
    assert y[TARGET_INDEX["U0_atom"]].item() == pytest.approx(-17.1722, abs=2e-4)
    for name in ("U0", "U", "H", "G"):
        assert y[TARGET_INDEX[name + "_atom"]] > y[TARGET_INDEX[name]]


def test_pyg_mode_has_pyg_zero_columns(ds):
    """PyG reads gdb9.sdf unsanitized: no aromatic flags, no hybridization, no aromatic bonds."""
    assert ds._data.x[:, 6:10].abs().sum() == 0
    assert ds._data.edge_attr[:, 3].sum() == 0
    assert ds._data.edge_attr[:, 1].sum() > 0 and ds._data.edge_attr[:, 2].sum() > 0


def test_sanitized_mode_aromatic_rings(ds, ds_sanitized):
    pyrrole = ds_sanitized[[d.name for d in ds_sanitized].index("gdb_50")]
    assert pyrrole.smiles == "[H]c1c([H])c([H])n([H])c1[H]"
    heavy = pyrrole.z > 1
    assert pyrrole.x[heavy, 6].eq(1).all() and pyrrole.x[heavy, 8].eq(1).all()  # aromatic, sp2
    assert pyrrole.edge_attr[:, 3].sum() == 10  # 5 ring bonds, both directions
    aromatic_molecules = {d.name for d in ds_sanitized if d.edge_attr[:, 3].any()}
    assert aromatic_molecules == {"gdb_50", "gdb_51", "gdb_52", "gdb_53"}  # pyrrole, imidazole, furan, oxazole
    assert ds_sanitized[0].x[0, 9] == 1  # sp3 carbon in CH4
    # same graphs and same non-perception features as the PyG-mode dataset
    for a, b in zip(ds, ds_sanitized):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)
        assert torch.equal(a.x[:, :6], b.x[:, :6]) and torch.equal(a.x[:, 10], b.x[:, 10])
        assert torch.equal(a.edge_attr[:, 2], b.edge_attr[:, 2])


def test_batches_like_pyg(ds):
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(ds, batch_size=32)))
    assert batch.num_graphs == 32 and batch.y.shape == (32, 19) and batch.x.shape[1] == 11


def test_processed_cache_reused(ds, data_dir, monkeypatch):
    assert ds.build_stats["molecules"] == N
    assert ds.build_stats["bond_source"]["smiles_match"] == N and ds.build_stats["fallbacks"] == []

    def boom(self):
        raise AssertionError("reprocessed although the cache exists")

    monkeypatch.setattr(QM9CSV, "process", boom)
    again = QM9CSV(data_dir, max_molecules=N)
    assert torch.equal(again._data.x, ds._data.x) and again.processed_paths == ds.processed_paths
    assert f"_n{N}_" in again.processed_file_names[0]


def test_missing_data_dir(tmp_path):
    where = tmp_path / "no_data_here"
    with pytest.raises(UserError, match="no_data_here"):
        load_qm9(where, max_molecules=5)
    (where / "qm9").mkdir(parents=True)
    with pytest.raises(UserError, match=r"qm9_part1\.csv.*qm9pack"):
        load_qm9(where, max_molecules=5)


def test_truncated_gz(tmp_path, data_dir):
    src = qm9_csv.find_csv_files(data_dir)[0]
    (tmp_path / "qm9").mkdir()
    with open(src, "rb") as f:
        head = f.read(40_000)
    if not src.name.endswith(".gz"):
        head = gzip.compress(head)[:-100]
    (tmp_path / "qm9" / "qm9_first10k.csv.gz").write_bytes(head)
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_qm9(tmp_path, max_molecules=N)


def test_missing_column(tmp_path, table):
    (tmp_path / "qm9").mkdir()
    table.head(5).drop(columns=["XYZ_Ang"]).to_csv(tmp_path / "qm9" / "qm9_first10k.csv", index=False)
    with pytest.raises(UserError, match="XYZ_Ang"):
        load_qm9(tmp_path, max_molecules=3)


def test_too_few_molecules(tmp_path, table):
    (tmp_path / "qm9").mkdir()
    table.head(5).to_csv(tmp_path / "qm9" / "qm9_first10k.csv", index=False)
    small = load_qm9(tmp_path, max_molecules=5)  # real rows written back unchanged
    assert [d.name for d in small] == [f"gdb_{i}" for i in range(1, 6)]
    with pytest.raises(UserError, match="only 5"):
        load_qm9(tmp_path, max_molecules=6)


def test_rdkit_missing(data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(UserError, match="QM9 needs RDKit: pip install rdkit"):
        QM9CSV(data_dir, max_molecules=7)  # a size not cached yet, so it must process


def test_strained_polycycle_keeps_smiles_graph(table):
    """Index 105, bicyclo[1.1.1]pentane: the bridgeheads are ~1.87 A apart, inside the distance
    cut-off, yet not bonded in the GDB SMILES; the graph must keep the SMILES bonds only."""
    builder = GraphBuilder("pyg")
    row = next(r for r in table.itertuples(index=False) if r.Index == 105)
    assert row.SMILES == "C1C2CC1C2"
    d = builder.build(row, "test")
    assert d.edge_index.shape[1] == 2 * 14  # 6 C-C + 8 C-H bonds
    assert builder.stats == {"smiles_match": 1, "smiles_match_loose": 0, "xyz2mol": 0, "single_bonds": 0}
    order = torch.zeros(len(d.z)).index_add_(0, d.edge_index[0], d.edge_attr[:, :3] @ torch.tensor([1.0, 2.0, 3.0]))
    assert order.tolist() == [VALENCE[v] for v in d.z.tolist()]
    length = (d.pos[d.edge_index[0]] - d.pos[d.edge_index[1]]).norm(dim=1)
    assert length.max() < 1.6
    carbons = (d.z == 6).nonzero().flatten()
    dist = torch.cdist(d.pos[carbons], d.pos[carbons])
    assert ((dist > 1.6) & (dist < 1.98)).any()  # the non-bonded contact that had to be ignored


@pytest.mark.parametrize("column, value, words", [
    ("Polarizability_bohr3", "abc", "line 4 (Index 3), column Polarizability_bohr3: 'abc' is not a number"),
    ("Polarizability_bohr3", "NaN", "line 4 (Index 3), column Polarizability_bohr3: 'NaN' is not a finite number"),
    ("Polarizability_bohr3", "inf", "line 4 (Index 3), column Polarizability_bohr3: inf is not a finite number"),
    ("HOMO_au", "", "line 4 (Index 3), column HOMO_au: is empty"),
    ("N_atoms", "2.5", "line 4 (Index 3), column N_atoms: 2.5 is not an integer"),
    ("Index", "x3", "line 4, column Index: 'x3' is not a number"),
    ("SMILES", "", "line 4 (Index 3), column SMILES: is empty"),
    ("XYZ_Ang", "[[0,0,nan],[1,0,0],[0,1,0]]", "line 4 (Index 3), column XYZ_Ang: a coordinate is not a finite"),
])
def test_a_bad_value_names_file_line_and_column(tmp_path, table, column, value, words):
    """A value the loader reads that is not what the column holds stops the load with one line (it
    never reaches training as a NaN loss)."""
    rows = table.head(5).astype({column: object})
    rows.loc[2, column] = value  # the third molecule, Index 3, on line 4 of the file
    (tmp_path / "qm9").mkdir()
    path = tmp_path / "qm9" / "qm9_first10k.csv"
    rows.to_csv(path, index=False)
    with pytest.raises(UserError) as info:
        load_qm9(tmp_path, max_molecules=5)
    assert str(info.value).startswith(f"QM9 file {path}, ") and words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_value_in_a_row_no_run_reads_is_no_error(tmp_path, table):
    rows = table.head(5).astype({"Polarizability_bohr3": object})
    rows.loc[4, "Polarizability_bohr3"] = "abc"
    (tmp_path / "qm9").mkdir()
    rows.to_csv(tmp_path / "qm9" / "qm9_first10k.csv", index=False)
    assert len(load_qm9(tmp_path, max_molecules=4)) == 4


def test_a_save_cut_short_leaves_no_processed_file(data_dir, monkeypatch):
    """A run killed while saving the processed graphs must not leave a partial file the next run loads."""
    import torch_geometric.io.fs as pyg_fs

    def cut_short(obj, path):
        with open(path, "wb") as f:
            f.write(b"\x80\x02 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pyg_fs, "torch_save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        QM9CSV(data_dir, max_molecules=9)  # a size no other test caches
    monkeypatch.undo()
    assert len(QM9CSV(data_dir, max_molecules=9)) == 9
