"""QM9 as PyG's `torch_geometric.datasets.QM9` builds it, rebuilt from the qm9pack CSV table.

The Grokfast reference (`main_qm9.py`) uses `QM9(root)[:100]`. PyG builds each graph from
`gdb9.sdf` (read with `Chem.SDMolSupplier(removeHs=False, sanitize=False)`), the targets
from `gdb9.sdf.csv`, and skips the 3,054 molecules listed in `uncharacterized.txt`. Neither
SDF file is available here (see data/README.md section 3), so every graph is rebuilt from
the qm9pack table (`<data_dir>/qm9/qm9_part{1,2,3}.csv[.gz]`, or the shared excerpt
`qm9_first10k.csv[.gz]`) with the same fields, dtypes, shapes and feature order:

    Data(x=[N, 11], z=[N], pos=[N, 3], edge_index=[2, E], smiles=str, edge_attr=[E, 4],
         y=[1, 19], name='gdb_<Index>', idx=Index - 1)

* `x`: one-hot H,C,N,O,F | atomic number | aromatic | sp, sp2, sp3 | number of bonded H.
* `edge_index`: every bond in both directions, sorted by (row, col) as PyG does;
  `edge_attr`: one-hot single / double / triple / aromatic.
* `y`: PyG's 19 targets, order and units: 0 mu (D), 1 alpha (bohr^3), 2 HOMO, 3 LUMO,
  4 gap, 5 R2 (bohr^2), 6 ZPVE, 7 U0, 8 U, 9 H, 10 G (eV), 11 Cv (cal/mol K),
  12-15 U0/U/H/G atomization energies (eV), 16-18 rotational constants A, B, C (GHz).
  Hartree -> eV with PyG's HAR2EV = 27.211386246.
* `idx`: PyG's running index over all 133,885 SDF records, i.e. `Index - 1`; `name`: the
  SDF title `gdb_<Index>`; molecules in `uncharacterized.txt` are dropped (qm9pack already
  lacks them; the list is still applied when the file is present).

How a graph is derived (atoms always in the xyz order, which is also PyG's / the SDF's):
  1. the GDB-17 SMILES is parsed without aromaticity perception, so its own Kekule bond
     orders and formal charges are kept, and explicit hydrogens are added;
  2. the xyz geometry gives a distance-based connectivity (RDKit `DetermineConnectivity`,
     covalent radii x 1.3); the SMILES graph (elements + connectivity, hydrogens included)
     is matched into it, which maps SMILES atoms onto xyz atoms. The match may ignore extra
     xyz contacts (strained polycycles put non-bonded bridgeheads ~1.9 A apart); where
     several embeddings exist the one with the shortest bonds (relative to covalent radii)
     wins. On the first 10,000 molecules every molecule maps at the first try, with one
     distinct bond set each (292 of them have such extra contacts, none in the first 100).
  3. fall-backs, never needed on those 10,000: a second match against connectivity at
     covalent radii x 1.6; then RDKit `DetermineBonds` (xyz2mol, charge 0) on the xyz alone;
     then connectivity with all-single bonds. Each use is counted in `dataset.build_stats`
     and warned about; no molecule is dropped, so indices stay aligned with PyG.

Two feature modes (`features=`):
  * "pyg" (default): PyG's semantics. PyG reads the SDF *unsanitized*, so RDKit never sets
    aromatic flags or hybridization: columns 6-9 of `x` (aromatic, sp, sp2, sp3) are 0 for
    every atom and no bond is typed aromatic (the SDF holds Kekule bonds only). This is
    reproduced by writing each molecule as a Kekule mol block and reading it back exactly
    as PyG does (`MolFromMolBlock(sanitize=False, removeHs=False)`), then applying PyG's
    per-atom/per-bond feature code. Known PyG behaviour: pyg-team/pytorch_geometric issues
    #2163, #8370 (all-zero hybridization/aromatic columns) and #10560 (no aromatic bonds).
  * "sanitized": the same graph after a full RDKit sanitization, so aromatic atoms/bonds
    and sp/sp2/sp3 are set (hydrogens get none of the three), i.e. what the feature names
    promise. Not what the reference trained on; offered for ablations.

Known differences from PyG's QM9 (on top of the unavailable SDF):
  * bonds: PyG's SDF bonds come from its own perception of the geometry and contain some
    artefacts (issue #10560: e.g. gdb_1150 has an extra 1.87 A C-C bond); here the GDB
    SMILES graph is used, so strained polycycles may have fewer edges than PyG's. For
    symmetry-equivalent bond orders (which Kekule form of a benzene-like ring, which O of
    a carboxylate carries the double bond) the choice may differ from the SDF's.
  * `smiles`: PyG's is `MolToSmiles` of the unsanitized SDF molecule (e.g.
    '[H]C([H])([H])[H]'); here the same call on the rebuilt molecule, so it differs only
    where the bonds above differ ("sanitized" mode: aromatic SMILES).
  * `pos`: full precision of the xyz (float32); the SDF rounds to 1e-4 A.
  * `y[12:16]`: U0/U/H/G minus the sum of PyG's per-element `atomrefs` (eV, copied below),
    in float64 then float32; PyG multiplies `gdb9.sdf.csv`'s kcal/mol values by its rounded
    0.04336414 eV/(kcal/mol): the two agree to ~1e-4 eV (CH4: -17.17222 vs -17.17220).
    Targets 0-11 and 16-18 come from the same QM9 numbers with the same factors.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from repro.data.paths import cache_dir, resolve_data_dir
from repro.errors import UserError

PROCESSED_VERSION = "v1"
FEATURE_MODES = ("pyg", "sanitized")

HAR2EV = 27.211386246  # PyG's torch_geometric.datasets.qm9.HAR2EV

# Per-element reference energies in eV for targets 7..10 (U0, U, H, G), element order
# H, C, N, O, F: the constants of PyG's `torch_geometric.datasets.qm9.atomrefs` (PyG 2.8.1),
# which are the QM9 atomref table (Hartree, e.g. H U0 = -0.500273) converted to eV.
# tests/test_data_qm9.py checks them against the installed PyG.
ATOMREFS_EV = {
    7: (-13.61312172, -1029.86312267, -1485.30251237, -2042.61123593, -2713.48485589),
    8: (-13.5745904, -1029.82456413, -1485.26398105, -2042.5727046, -2713.44632457),
    9: (-13.54887564, -1029.79887659, -1485.2382935, -2042.54701705, -2713.42063702),
    10: (-13.90303183, -1030.25891228, -1485.71166277, -2043.01812778, -2713.88796536),
}

ELEMENTS = ("H", "C", "N", "O", "F")  # PyG's one-hot order
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

# (name, unit) of PyG's 19 targets, in PyG's order.
TARGETS = (
    ("mu", "D"), ("alpha", "bohr^3"), ("homo", "eV"), ("lumo", "eV"), ("gap", "eV"),
    ("r2", "bohr^2"), ("zpve", "eV"), ("U0", "eV"), ("U", "eV"), ("H", "eV"), ("G", "eV"),
    ("cv", "cal/mol K"), ("U0_atom", "eV"), ("U_atom", "eV"), ("H_atom", "eV"),
    ("G_atom", "eV"), ("A", "GHz"), ("B", "GHz"), ("C", "GHz"),
)
TARGET_INDEX = {name: i for i, (name, _) in enumerate(TARGETS)}

# CSV column and factor for targets 0..11 and 16..18; 12..15 are derived from 7..10.
_DIRECT_TARGETS = (
    (0, "Dipole_debye", 1.0),
    (1, "Polarizability_bohr3", 1.0),
    (2, "HOMO_au", HAR2EV),
    (3, "LUMO_au", HAR2EV),
    (4, "HOMO_LUMO_gap_au", HAR2EV),
    (5, "R2_bohr2", 1.0),
    (6, "ZPVE_au", HAR2EV),
    (7, "InternalEnergy_0K_au", HAR2EV),
    (8, "InternalEnergy_298K_au", HAR2EV),
    (9, "Enthalphy_298K_au", HAR2EV),
    (10, "GibbsFreeEnergy_298K_au", HAR2EV),
    (11, "Heatcapacity_Cv_cal_mol_K", 1.0),
    (16, "RotA_GHz", 1.0),
    (17, "RotB_GHz", 1.0),
    (18, "RotC_GHz", 1.0),
)
_STRUCTURE_COLUMNS = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang")
REQUIRED_COLUMNS = _STRUCTURE_COLUMNS + tuple(col for _, col, _ in _DIRECT_TARGETS)

PART_STEMS = ("qm9_part1", "qm9_part2", "qm9_part3")
EXCERPT_STEM = "qm9_first10k"
UNCHARACTERIZED_STEM = "uncharacterized"
N_GDB9 = 133885

HOW_TO_GET = (
    "put qm9_part1..3.csv(.gz) (the data files of the pip package qm9pack==1.0.3) or "
    "qm9_first10k.csv.gz in <data_dir>/qm9/ (pass --data_dir / set GROKFAST_DATA_DIR), "
    "or use --download for PyG's own QM9 download"
)


# --------------------------------------------------------------------------------------
# Raw files
# --------------------------------------------------------------------------------------
def _existing(folder: Path, stem: str, suffix: str) -> Path | None:
    """`<stem><suffix>` or `<stem><suffix>.gz` in folder (plain file first), else None."""
    for name in (stem + suffix, stem + suffix + ".gz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def find_csv_files(data_dir: str | Path) -> list[Path]:
    """The QM9 table files to read, in order: qm9_part1..3 (a prefix of them), else the excerpt.

    Raises UserError when nothing is there or the parts have a gap.
    """
    folder = Path(data_dir) / "qm9"
    parts = [_existing(folder, stem, ".csv") for stem in PART_STEMS]
    if any(parts):
        n = 0
        while n < len(parts) and parts[n] is not None:
            n += 1
        if any(parts[n:]):
            present = ", ".join(p.name for p in parts if p is not None)
            raise UserError(f"QM9 table in {folder} is incomplete: found {present} but not "
                            f"{PART_STEMS[n]}.csv(.gz); {HOW_TO_GET}")
        return [p for p in parts if p is not None]
    excerpt = _existing(folder, EXCERPT_STEM, ".csv")
    if excerpt is not None:
        return [excerpt]
    raise UserError(f"no QM9 table found: looked for {folder}/qm9_part1.csv(.gz) and "
                    f"{folder}/{EXCERPT_STEM}.csv(.gz); {HOW_TO_GET}")


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:300]


def read_uncharacterized(path: str | Path) -> set[int]:
    """QM9 `Index` values listed in uncharacterized.txt(.gz): every line that starts with an integer.

    (The shared copy has 3 more leading blank lines than PyG's `split('\\n')[9:-2]` expects.)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {_one_line(err)}")
    ids = {int(m.group(1)) for m in re.finditer(r"(?m)^\s*(\d+)\s", text)}
    if not ids:
        raise UserError(f"QM9 file {path} lists no molecule indices: is it uncharacterized.txt?")
    return ids


def _read_rows(files: list[Path], skip: set[int], limit: int | None):
    """Yield pandas row-chunks of the required columns from the files in order, minus `skip`.

    Stops once `limit` rows were yielded (so a small `limit` reads only the start of the table).
    """
    import pandas as pd

    wanted = None if limit is None else limit
    last_index = 0
    for path in files:
        try:
            header = pd.read_csv(path, nrows=0)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError,
                pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {_one_line(err)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in header.columns]
        if missing:
            raise UserError(f"QM9 file {path} lacks column(s) {', '.join(missing)}: "
                            f"not a qm9pack table? {HOW_TO_GET}")
        chunksize = 2000 if wanted is None else max(64, min(2000, wanted + 16))
        dtypes = {c: str for c in ("SMILES", "Elements", "XYZ_Ang")}
        try:
            reader = pd.read_csv(path, usecols=list(REQUIRED_COLUMNS), dtype=dtypes,
                                 chunksize=chunksize, keep_default_na=False, na_values=[""])
            for chunk in reader:
                if chunk.isna().any().any():
                    bad = chunk[chunk.isna().any(axis=1)].iloc[0]
                    raise UserError(f"QM9 file {path} has an incomplete row (Index "
                                    f"{bad['Index']}): corrupt or truncated file")
                index = chunk["Index"].to_numpy()
                if index.dtype.kind not in "iu" or (index <= 0).any() or (index > N_GDB9).any():
                    raise UserError(f"QM9 file {path} has Index values outside 1..{N_GDB9}")
                if index[0] <= last_index or (np.diff(index) <= 0).any():
                    raise UserError(f"QM9 file {path}: Index values are not increasing across "
                                    f"the table (parts out of order?)")
                last_index = int(index[-1])
                if skip:
                    chunk = chunk[~chunk["Index"].isin(skip)]
                if wanted is not None:
                    chunk = chunk.iloc[:wanted]
                    wanted -= len(chunk)
                if len(chunk):
                    yield chunk
                if wanted == 0:
                    reader.close()
                    return
        except UserError:
            raise
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError,
                pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {_one_line(err)}")


def _parse_structure(row, path_hint: str) -> tuple[list[str], np.ndarray]:
    """Elements and xyz (Angstrom, float64) of one table row, validated."""
    elements = [e.strip().strip("'\"") for e in row.Elements.strip().strip("[]").split(",")]
    try:
        xyz = np.array(row.XYZ_Ang.replace("[", " ").replace("]", " ").split(","), dtype=np.float64)
    except ValueError as err:
        raise UserError(f"QM9 {path_hint}: Index {row.Index} has unreadable XYZ_Ang: {_one_line(err)}")
    n = int(row.N_atoms)
    if len(elements) != n or xyz.size != 3 * n or not set(elements) <= set(ELEMENTS):
        raise UserError(f"QM9 {path_hint}: Index {row.Index} is inconsistent (N_atoms {n}, "
                        f"{len(elements)} elements, {xyz.size} coordinates): corrupt row")
    return elements, xyz.reshape(n, 3)


def _targets(row, elements: list[str]) -> torch.Tensor:
    y = np.zeros(19, dtype=np.float64)
    for i, col, factor in _DIRECT_TARGETS:
        y[i] = float(getattr(row, col)) * factor
    counts = np.array([elements.count(e) for e in ELEMENTS], dtype=np.float64)
    for target, refs in ATOMREFS_EV.items():
        y[target + 5] = y[target] - float(counts @ np.array(refs))
    return torch.tensor(y, dtype=torch.float32).view(1, 19)


# --------------------------------------------------------------------------------------
# RDKit part
# --------------------------------------------------------------------------------------
def _import_rdkit():
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdDetermineBonds
    except ImportError:
        raise UserError("QM9 needs RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem, rdDetermineBonds


class _GraphBuilder:
    """Turns one table row into a PyG `Data`, the RDKit way described in the module docstring."""

    def __init__(self, features: str):
        self.Chem, self.rdDetermineBonds = _import_rdkit()
        Chem = self.Chem
        BT = Chem.BondType
        HT = Chem.HybridizationType
        self.features = features
        self.bond_class = {BT.SINGLE: 0, BT.DOUBLE: 1, BT.TRIPLE: 2, BT.AROMATIC: 3}
        self.hyb = (HT.SP, HT.SP2, HT.SP3)
        self.rcov = {e: Chem.GetPeriodicTable().GetRcovalent(ATOMIC_NUMBER[e]) for e in ELEMENTS}
        self.stats = {"smiles_match": 0, "smiles_match_loose": 0, "xyz2mol": 0, "single_bonds": 0}
        self.fallbacks: list[tuple[int, str]] = []

    # -- molecules -----------------------------------------------------------------------
    def _xyz_mol(self, elements, xyz):
        """Atoms in xyz order with the geometry as 3D conformer, no bonds, no implicit H."""
        Chem = self.Chem
        mol = Chem.RWMol()
        for e in elements:
            atom = Chem.Atom(ATOMIC_NUMBER[e])
            atom.SetNoImplicit(True)
            mol.AddAtom(atom)
        conf = Chem.Conformer(len(elements))
        conf.SetPositions(np.ascontiguousarray(xyz, dtype=np.float64))
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
        return mol

    def _generic(self, mol):
        """Elements + connectivity only (all bonds single, no charges/aromaticity), for matching."""
        g = self.Chem.RWMol(mol)
        single = self.Chem.BondType.SINGLE
        for i in range(g.GetNumBonds()):
            b = g.GetBondWithIdx(i)
            b.SetBondType(single)
            b.SetIsAromatic(False)
        for i in range(g.GetNumAtoms()):
            a = g.GetAtomWithIdx(i)
            a.SetIsAromatic(False)
            a.SetFormalCharge(0)
            a.SetNoImplicit(True)
            a.SetNumExplicitHs(0)
        g.UpdatePropertyCache(strict=False)
        return g

    def _smiles_mol(self, smiles):
        """The GDB SMILES with its own Kekule bonds and charges, explicit H atoms; None if unparsable."""
        Chem = self.Chem
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            return None
        try:
            Chem.SanitizeMol(mol, Chem.SanitizeFlags.SANITIZE_ALL
                             ^ Chem.SanitizeFlags.SANITIZE_SETAROMATICITY)
            if any(b.GetIsAromatic() for b in mol.GetBonds()):  # lower-case input: kekulize
                Chem.Kekulize(mol, clearAromaticFlags=True)
            return Chem.AddHs(mol)
        except Exception:  # noqa: BLE001 - RDKit raises several unrelated types
            return None

    def _match(self, base, generic_smol, bonds, radii, xyz, cov_factor):
        """xyz index of every SMILES atom (a tuple), or None.

        `base`: the bond-less xyz molecule; `generic_smol`: the SMILES graph; `bonds`: its
        (begin, end) atom pairs; `radii`: covalent radius of each SMILES atom.
        """
        xmol = self.Chem.RWMol(base)
        self.rdDetermineBonds.DetermineConnectivity(xmol, covFactor=cov_factor)
        xmol.UpdatePropertyCache(strict=False)
        if xmol.GetNumBonds() == len(bonds):  # a match is then a graph isomorphism
            match = xmol.GetSubstructMatch(generic_smol)
            return tuple(match) if match else None
        matches = xmol.GetSubstructMatches(generic_smol, uniquify=False, maxMatches=5000)
        if not matches:
            return None
        m = np.asarray(matches)  # (n_matches, n_atoms)
        ref = radii[bonds[:, 0]] + radii[bonds[:, 1]]
        lengths = np.linalg.norm(xyz[m[:, bonds[:, 0]]] - xyz[m[:, bonds[:, 1]]], axis=-1)
        return tuple(int(i) for i in m[int(np.argmin((lengths / ref).sum(axis=1)))])

    def _kekule_mol(self, row, elements, xyz):
        """RDKit molecule in xyz atom order with Kekule bond orders and formal charges."""
        Chem = self.Chem
        base = self._xyz_mol(elements, xyz)
        smol = self._smiles_mol(row.SMILES)
        if smol is not None and smol.GetNumAtoms() == len(elements):
            generic = self._generic(smol)
            bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in smol.GetBonds()],
                             dtype=np.int64).reshape(-1, 2)
            radii = np.array([self.rcov[a.GetSymbol()] for a in smol.GetAtoms()])
            for key, factor in (("smiles_match", 1.3), ("smiles_match_loose", 1.6)):
                match = self._match(base, generic, bonds, radii, xyz, factor)
                if match is None:
                    continue
                mol = Chem.RWMol(base)
                for s_idx, x_idx in enumerate(match):
                    charge = smol.GetAtomWithIdx(s_idx).GetFormalCharge()
                    if charge:
                        mol.GetAtomWithIdx(x_idx).SetFormalCharge(charge)
                for b in smol.GetBonds():
                    mol.AddBond(match[b.GetBeginAtomIdx()], match[b.GetEndAtomIdx()], b.GetBondType())
                self.stats[key] += 1
                if key != "smiles_match":
                    self.fallbacks.append((int(row.Index), key))
                mol.UpdatePropertyCache(strict=False)
                return mol
        mol = Chem.RWMol(base)
        try:
            self.rdDetermineBonds.DetermineBonds(mol, charge=0)
            Chem.Kekulize(mol, clearAromaticFlags=True)
            self.stats["xyz2mol"] += 1
            self.fallbacks.append((int(row.Index), "xyz2mol"))
        except Exception:  # noqa: BLE001
            mol = Chem.RWMol(base)
            self.rdDetermineBonds.DetermineConnectivity(mol)
            self.stats["single_bonds"] += 1
            self.fallbacks.append((int(row.Index), "single_bonds"))
        mol.UpdatePropertyCache(strict=False)
        return mol

    def _feature_mol(self, kekule):
        """The molecule whose atoms/bonds are featurised: see FEATURE_MODES in the docstring."""
        Chem = self.Chem
        if self.features == "pyg":
            # PyG: Chem.SDMolSupplier(gdb9.sdf, removeHs=False, sanitize=False)
            block = Chem.MolToMolBlock(kekule, kekulize=False)
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False)
            if mol is None:
                raise RuntimeError("RDKit could not re-read its own mol block")
            return mol
        mol = Chem.Mol(kekule)
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - keep the graph, only partial perception
            mol = Chem.Mol(kekule)
            Chem.SanitizeMol(mol, Chem.SanitizeFlags.SANITIZE_SETAROMATICITY
                             | Chem.SanitizeFlags.SANITIZE_SETHYBRIDIZATION,
                             catchErrors=True)
        return mol

    # -- features (the logic of PyG's QM9.process) -----------------------------------------
    def build(self, row, path_hint: str) -> Data:
        elements, xyz = _parse_structure(row, path_hint)
        mol = self._feature_mol(self._kekule_mol(row, elements, xyz))
        n = len(elements)
        atoms = [mol.GetAtomWithIdx(i) for i in range(n)]
        if [a.GetSymbol() for a in atoms] != elements:
            raise RuntimeError(f"QM9 Index {row.Index}: atom order lost while building the graph")

        atomic_number = [ATOMIC_NUMBER[e] for e in elements]
        hyb = [a.GetHybridization() for a in atoms]
        node = torch.zeros(n, 11)
        node[torch.arange(n), torch.tensor([ELEMENTS.index(e) for e in elements])] = 1.0
        node[:, 5] = torch.tensor(atomic_number, dtype=torch.float)
        node[:, 6] = torch.tensor([1.0 if a.GetIsAromatic() else 0.0 for a in atoms])
        for col, kind in zip((7, 8, 9), self.hyb):
            node[:, col] = torch.tensor([1.0 if h == kind else 0.0 for h in hyb])
        z = torch.tensor(atomic_number, dtype=torch.long)

        bonds = [mol.GetBondWithIdx(i) for i in range(mol.GetNumBonds())]
        begin = [b.GetBeginAtomIdx() for b in bonds]
        end = [b.GetEndAtomIdx() for b in bonds]
        kind = [self.bond_class[b.GetBondType()] for b in bonds]
        edge_index = torch.tensor([begin + end, end + begin], dtype=torch.long).view(2, -1)
        edge_type = torch.tensor(kind + kind, dtype=torch.long)
        perm = (edge_index[0] * n + edge_index[1]).argsort()
        edge_index, edge_type = edge_index[:, perm], edge_type[perm]
        edge_attr = torch.zeros(edge_type.numel(), 4)
        edge_attr[torch.arange(edge_type.numel()), edge_type] = 1.0

        # number of bonded hydrogens, as PyG: scatter-sum of is-H over incoming edges
        node[:, 10].index_add_(0, edge_index[1], (z == 1).to(torch.float)[edge_index[0]])

        index = int(row.Index)
        return Data(
            x=node,
            z=z,
            pos=torch.tensor(xyz, dtype=torch.float),
            edge_index=edge_index,
            smiles=self.Chem.MolToSmiles(mol, isomericSmiles=True),
            edge_attr=edge_attr,
            y=_targets(row, elements),
            name=f"gdb_{index}",
            idx=index - 1,
        )


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------
class QM9CSV(InMemoryDataset):
    """PyG-compatible QM9 graphs built from the qm9pack CSV table (see the module docstring).

    Raw files are read from `<data_dir>/qm9/`; the processed graphs are cached in
    `cache_dir(data_dir, "qm9")/processed/` under a name that encodes the format version, the
    feature mode, `max_molecules` and the source files (names + sizes), so a changed table or
    setting is processed afresh and an unchanged one is loaded without RDKit.

    Args:
        data_dir: the data folder (None: $GROKFAST_DATA_DIR, else `data/`).
        max_molecules: keep only the first N characterized molecules (PyG's `QM9()[:N]`);
            only as many table rows as needed are read. None: the whole table.
        features: "pyg" (default, PyG's unsanitized semantics) or "sanitized".
        transform, pre_transform, pre_filter, force_reload: as in PyG's datasets.
    """

    def __init__(self, data_dir=None, max_molecules: int | None = None, features: str = "pyg",
                 transform=None, pre_transform=None, pre_filter=None, force_reload: bool = False,
                 log: bool = False):
        if features not in FEATURE_MODES:
            raise UserError(f"unknown QM9 feature mode {features!r}; choose from {', '.join(FEATURE_MODES)}")
        if max_molecules is not None and (int(max_molecules) != max_molecules or max_molecules < 1):
            raise UserError(f"max_molecules must be a positive integer, got {max_molecules!r}")
        self.data_dir = resolve_data_dir(data_dir)
        qm9_dir = self.data_dir / "qm9"
        if not qm9_dir.is_dir():
            raise UserError(f"no QM9 data: {qm9_dir} does not exist; {HOW_TO_GET}")
        self.csv_files = find_csv_files(self.data_dir)
        self.uncharacterized_file = _existing(qm9_dir, UNCHARACTERIZED_STEM, ".txt")
        self.max_molecules = None if max_molecules is None else int(max_molecules)
        self.features = features
        self.build_stats: dict = {}
        super().__init__(str(cache_dir(self.data_dir, "qm9")), transform, pre_transform,
                         pre_filter, log=log, force_reload=force_reload)
        self.load(self.processed_paths[0])
        meta = Path(self.processed_paths[0]).with_suffix(".json")
        if meta.is_file():
            self.build_stats = json.loads(meta.read_text())

    # raw files live in the (read-only) data folder, not under root/raw
    @property
    def raw_dir(self) -> str:
        return str(self.data_dir / "qm9")

    @property
    def raw_file_names(self) -> list[str]:
        names = [p.name for p in self.csv_files]
        if self.uncharacterized_file is not None:
            names.append(self.uncharacterized_file.name)
        return names

    def _source_tag(self) -> str:
        files = list(self.csv_files)
        if self.uncharacterized_file is not None:
            files.append(self.uncharacterized_file)
        sig = ";".join(f"{p.name}:{p.stat().st_size}" for p in files)
        return hashlib.sha1(sig.encode()).hexdigest()[:10]

    @property
    def processed_file_names(self) -> list[str]:
        n = "all" if self.max_molecules is None else str(self.max_molecules)
        return [f"qm9csv_{PROCESSED_VERSION}_{self.features}_n{n}_{self._source_tag()}.pt"]

    def download(self) -> None:  # only reached when a raw file vanished after __init__
        raise UserError(f"QM9 raw files missing in {self.raw_dir}; {HOW_TO_GET}")

    def process(self) -> None:
        t0 = time.perf_counter()
        skip = read_uncharacterized(self.uncharacterized_file) if self.uncharacterized_file else set()
        hint = ", ".join(p.name for p in self.csv_files)
        # read (and validate) the rows first: cheap, and a too-short table fails before any work
        chunks = list(_read_rows(self.csv_files, skip, self.max_molecules))
        n_rows = sum(len(c) for c in chunks)
        if self.max_molecules is not None and n_rows < self.max_molecules:
            raise UserError(f"QM9 table ({hint}) holds only {n_rows} characterized "
                            f"molecules, {self.max_molecules} were asked for")
        if not n_rows:
            raise UserError(f"QM9 table ({hint}) holds no molecules")
        builder = _GraphBuilder(self.features)
        data_list = []
        for chunk in chunks:
            for row in chunk.itertuples(index=False):
                data = builder.build(row, hint)
                if self.pre_filter is not None and not self.pre_filter(data):
                    continue
                if self.pre_transform is not None:
                    data = self.pre_transform(data)
                data_list.append(data)
        if not data_list:
            raise UserError(f"QM9: pre_filter rejected all {n_rows} molecules")
        if builder.fallbacks:
            warnings.warn(f"QM9: {len(builder.fallbacks)} molecule(s) were not built from their "
                          f"SMILES graph at the first try: {builder.fallbacks[:10]}", stacklevel=2)
        self.build_stats = {
            "molecules": len(data_list),
            "bond_source": builder.stats,
            "fallbacks": builder.fallbacks,
            "skipped_uncharacterized_listed": len(skip),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.save(data_list, self.processed_paths[0])
        Path(self.processed_paths[0]).with_suffix(".json").write_text(json.dumps(self.build_stats))


def load_qm9(data_dir=None, max_molecules: int | None = None, download: bool = False,
             features: str = "pyg", **kwargs):
    """QM9 graphs for the first `max_molecules` characterized molecules (all when None).

    Default: `QM9CSV` from the local qm9pack table. `download=True`: PyG's own
    `torch_geometric.datasets.QM9` (downloads ~90 MB of raw SDF/CSV or its pre-processed
    version into `cache_dir(data_dir, "qm9_pyg")`), then sliced to `max_molecules`.
    """
    if not download:
        return QM9CSV(data_dir, max_molecules=max_molecules, features=features, **kwargs)
    if features != "pyg":
        raise UserError("features='sanitized' needs the local QM9 table; PyG's download has "
                        "its own (pyg) features")
    from torch_geometric.datasets import QM9

    root = cache_dir(resolve_data_dir(data_dir), "qm9_pyg")
    try:
        dataset = QM9(str(root), **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - network/extraction errors of many types
        raise UserError(f"PyG's QM9 download into {root} failed: {_one_line(err)}") from None
    if max_molecules is not None:
        if max_molecules > len(dataset):
            raise UserError(f"PyG's QM9 has {len(dataset)} molecules, {max_molecules} were asked for")
        dataset = dataset[: int(max_molecules)]
    return dataset
