"""One qm9pack table row -> one PyG `Data` graph, with RDKit, as PyG's QM9 builds it from its SDF.

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
"""
from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from repro.data.qm9_csv import ATOMIC_NUMBER, ELEMENTS, parse_structure, targets
from repro.errors import UserError

FEATURE_MODES = ("pyg", "sanitized")


def _import_rdkit():
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdDetermineBonds
    except ImportError:
        raise UserError("QM9 needs RDKit: pip install rdkit") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem, rdDetermineBonds


class GraphBuilder:
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
    def build(self, row, where: str) -> Data:
        """The graph of table row `row`; `where` names the row in error messages."""
        elements, xyz = parse_structure(row, where)
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
            y=targets(row, elements),
            name=f"gdb_{index}",
            idx=index - 1,
        )
