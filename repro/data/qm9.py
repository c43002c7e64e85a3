"""QM9 as PyG's `torch_geometric.datasets.QM9` builds it, rebuilt from the qm9pack CSV table.

The Grokfast reference (`main_qm9.py`) uses `QM9(root)[:100]`. PyG builds each graph from
`gdb9.sdf` (read with `Chem.SDMolSupplier(removeHs=False, sanitize=False)`), the targets
from `gdb9.sdf.csv`, and skips the 3,054 molecules listed in `uncharacterized.txt`. Neither
SDF file could be found (the data folder's README.md, section 3, "What is missing compared with
`torch_geometric.datasets.QM9`"), so every graph is rebuilt from the qm9pack table
(`<data_dir>/qm9/qm9_part{1,2,3}.csv[.gz]`, or the shared excerpt `qm9_first10k.csv[.gz]`) with
the same fields, dtypes, shapes and feature order:

    Data(x=[N, 11], z=[N], pos=[N, 3], edge_index=[2, E], smiles=str, edge_attr=[E, 4],
         y=[1, 19], name='gdb_<Index>', idx=Index - 1)

* `x`: one-hot H,C,N,O,F | atomic number | aromatic | sp, sp2, sp3 | number of bonded H.
* `edge_index`: every bond in both directions, sorted by (row, col) as PyG does;
  `edge_attr`: one-hot single / double / triple / aromatic.
* `y`: PyG's 19 targets in its order and units (repro/data/qm9_csv.py).
* `idx`: PyG's running index over all 133,885 SDF records, i.e. `Index - 1`; `name`: the
  SDF title `gdb_<Index>`; molecules in `uncharacterized.txt` are dropped (qm9pack already
  lacks them; the list is still applied when the file is present).

Three modules, one job each: repro/data/qm9_csv.py reads and checks the table and converts the
targets; repro/data/qm9_graphs.py builds a molecule's graph with RDKit (how, and the two feature
modes, "pyg" and "sanitized"); this one is the PyG dataset over them (with its processed-graph
cache) and `load_qm9`, which can also use PyG's own download.

Known differences from PyG's QM9 (on top of the unavailable SDF):
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

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

from torch_geometric.data import InMemoryDataset

from repro.data.paths import cache_dir, resolve_data_dir
from repro.data.qm9_csv import (HOW_TO_GET, UNCHARACTERIZED_STEM, existing_file, find_csv_files, one_line,
                                read_rows, read_uncharacterized)
from repro.data.qm9_graphs import FEATURE_MODES, GraphBuilder
from repro.errors import UserError

PROCESSED_VERSION = "v1"


class QM9CSV(InMemoryDataset):
    """PyG-compatible QM9 graphs built from the qm9pack CSV table (see the module docstring).

    Raw files are read from `<data_dir>/qm9/`; the processed graphs are cached in
    `cache_dir("qm9")/processed/` under a name that encodes the format version, the feature mode,
    `max_molecules` and the source files (paths, sizes, modification times), so a changed table or
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
        self.uncharacterized_file = existing_file(qm9_dir, UNCHARACTERIZED_STEM, ".txt")
        self.max_molecules = None if max_molecules is None else int(max_molecules)
        self.features = features
        self.build_stats: dict = {}
        super().__init__(str(cache_dir("qm9")), transform, pre_transform,
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
        sig = ";".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
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
        chunks = list(read_rows(self.csv_files, skip, self.max_molecules))
        n_rows = sum(len(c) for _, c in chunks)
        if self.max_molecules is not None and n_rows < self.max_molecules:
            raise UserError(f"QM9 table ({hint}) holds only {n_rows} characterized "
                            f"molecules, {self.max_molecules} were asked for")
        if not n_rows:
            raise UserError(f"QM9 table ({hint}) holds no molecules")
        builder = GraphBuilder(self.features)
        data_list = []
        for path, chunk in chunks:
            for position, row in zip(chunk.index, chunk.itertuples(index=False)):
                data = builder.build(row, f"QM9 file {path}, line {int(position) + 2}")
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
        # temp file + rename: a run killed mid-save, or another one processing the same molecules at the
        # same time, never leaves a half-written file for the next run to load
        path = Path(self.processed_paths[0])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.save(data_list, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        path.with_suffix(".json").write_text(json.dumps(self.build_stats))


def load_qm9(data_dir=None, max_molecules: int | None = None, download: bool = False,
             features: str = "pyg", **kwargs):
    """QM9 graphs for the first `max_molecules` characterized molecules (all when None).

    Default: `QM9CSV` from the local qm9pack table. `download=True`: PyG's own
    `torch_geometric.datasets.QM9` (downloads ~90 MB of raw SDF/CSV or its pre-processed
    version into `cache_dir("qm9_pyg")`), then sliced to `max_molecules`.
    """
    if not download:
        return QM9CSV(data_dir, max_molecules=max_molecules, features=features, **kwargs)
    if features != "pyg":
        raise UserError("features='sanitized' needs the local QM9 table; PyG's download has "
                        "its own (pyg) features")
    from torch_geometric.datasets import QM9

    root = cache_dir("qm9_pyg")
    try:
        dataset = QM9(str(root), **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - network/extraction errors of many types
        raise UserError(f"PyG's QM9 download into {root} failed: {one_line(err)}") from None
    if max_molecules is not None:
        if max_molecules > len(dataset):
            raise UserError(f"PyG's QM9 has {len(dataset)} molecules, {max_molecules} were asked for")
        dataset = dataset[: int(max_molecules)]
    return dataset
