"""The qm9pack QM9 table: which files to read, its rows checked value by value, and PyG's 19 targets.

Files: `<data_dir>/qm9/qm9_part{1,2,3}.csv[.gz]` (the data files of the pip package qm9pack==1.0.3),
else the shared excerpt `qm9_first10k.csv[.gz]`, and `uncharacterized.txt[.gz]` (the 3,054 molecules
PyG's QM9 skips). The data folder's README.md, section 3 ("QM9"), describes the files, their sources
and columns. A row is read only when a run needs it; an empty, non-numeric or non-finite value in a
column the loader reads stops with one line naming the file, its line, the molecule's Index and the
column (bad data never reaches training as a NaN loss).

Targets (`y`, 19 per molecule), PyG's order and units: 0 mu (D), 1 alpha (bohr^3), 2 HOMO, 3 LUMO,
4 gap, 5 R2 (bohr^2), 6 ZPVE, 7 U0, 8 U, 9 H, 10 G (eV), 11 Cv (cal/mol K), 12-15 U0/U/H/G
atomization energies (eV), 16-18 rotational constants A, B, C (GHz). Hartree -> eV with PyG's
HAR2EV = 27.211386246. `y[12:16]` are U0/U/H/G minus the sum of PyG's per-element `atomrefs` (eV,
copied below), in float64 then float32; PyG multiplies `gdb9.sdf.csv`'s kcal/mol values by its
rounded 0.04336414 eV/(kcal/mol): the two agree to ~1e-4 eV (CH4: -17.17222 vs -17.17220).
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from repro.errors import UserError


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
INTEGER_COLUMNS = ("Index", "N_atoms")
NUMBER_COLUMNS = INTEGER_COLUMNS + tuple(col for _, col, _ in _DIRECT_TARGETS)

PART_STEMS = ("qm9_part1", "qm9_part2", "qm9_part3")
EXCERPT_STEM = "qm9_first10k"
UNCHARACTERIZED_STEM = "uncharacterized"
N_GDB9 = 133885

HOW_TO_GET = (
    "put qm9_part1..3.csv(.gz) (the data files of the pip package qm9pack==1.0.3) or "
    "qm9_first10k.csv.gz in <data_dir>/qm9/ (pass --data_dir / set GROKFAST_DATA_DIR), "
    "or use --download for PyG's own QM9 download"
)


def existing_file(folder: Path, stem: str, suffix: str) -> Path | None:
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
    parts = [existing_file(folder, stem, ".csv") for stem in PART_STEMS]
    if any(parts):
        n = 0
        while n < len(parts) and parts[n] is not None:
            n += 1
        if any(parts[n:]):
            present = ", ".join(p.name for p in parts if p is not None)
            raise UserError(f"QM9 table in {folder} is incomplete: found {present} but not "
                            f"{PART_STEMS[n]}.csv(.gz); {HOW_TO_GET}")
        return [p for p in parts if p is not None]
    excerpt = existing_file(folder, EXCERPT_STEM, ".csv")
    if excerpt is not None:
        return [excerpt]
    raise UserError(f"no QM9 table found: looked for {folder}/qm9_part1.csv(.gz) and "
                    f"{folder}/{EXCERPT_STEM}.csv(.gz); {HOW_TO_GET}")


def one_line(err: BaseException) -> str:
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
        raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {one_line(err)}")
    ids = {int(m.group(1)) for m in re.finditer(r"(?m)^\s*(\d+)\s", text)}
    if not ids:
        raise UserError(f"QM9 file {path} lists no molecule indices: is it uncharacterized.txt?")
    return ids


def read_rows(files: list[Path], skip: set[int], limit: int | None):
    """Yield (file, chunk): pandas row-chunks of the required columns from the files in order, minus
    `skip`, every value checked (check_values). A chunk's index is the row's position in its file.

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
            raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {one_line(err)}")
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
                chunk = check_values(chunk, ("Index",), path)  # the whole chunk: its order is checked
                index = chunk["Index"].to_numpy()
                if (index <= 0).any() or (index > N_GDB9).any():
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
                if len(chunk):  # only the rows a run uses: a bad value further on does not stop it
                    yield path, check_values(chunk, REQUIRED_COLUMNS[1:], path)
                if wanted == 0:
                    reader.close()
                    return
        except UserError:
            raise
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError,
                pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"QM9 file {path} is unreadable (corrupt or truncated?): {one_line(err)}")


def check_values(chunk, columns, path: Path):
    """`chunk` with `columns` checked and the number columns converted (integers to int64). The first
    empty, non-numeric, non-finite or (for Index, N_atoms) non-integer value raises UserError naming
    the file, its line, the molecule's Index and the column."""
    import pandas as pd

    chunk = chunk.copy()
    first = None  # (row position, column, what is wrong)
    for col in columns:
        raw = chunk[col]
        if col not in NUMBER_COLUMNS:
            bad = raw.isna().to_numpy()
            problem = "is empty (a truncated or corrupt file?)"
        else:
            numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(numbers)
            if col in INTEGER_COLUMNS:
                bad |= np.isfinite(numbers) & (numbers != np.round(numbers))
            if not bad.any():
                chunk[col] = numbers.astype(np.int64) if col in INTEGER_COLUMNS else numbers
        if bad.any():
            pos = int(np.argmax(bad))
            if first is None or pos < first[0]:
                if col in NUMBER_COLUMNS:
                    problem = _number_problem(raw.iloc[pos], col in INTEGER_COLUMNS)
                first = (pos, col, problem)
    if first is not None:
        pos, col, problem = first
        index = chunk["Index"].iloc[pos] if col != "Index" else None
        molecule = f" (Index {index})" if index is not None else ""
        raise UserError(f"QM9 file {path}, line {int(chunk.index[pos]) + 2}{molecule}, column {col}: "
                        f"{problem}")
    return chunk


def _number_problem(value, integer: bool) -> str:
    import pandas as pd

    if pd.isna(value):  # an empty cell (a literal 'nan' stays a string)
        return "is empty (a truncated or corrupt file?)"
    shown = repr(value) if isinstance(value, str) else str(value)  # a number pandas parsed: as it prints
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{shown} is not a number"
    if not np.isfinite(number):
        return f"{shown} is not a finite number"
    return f"{shown} is not an integer" if integer else f"{shown} is not a number"


def parse_structure(row, where: str) -> tuple[list[str], np.ndarray]:
    """Elements and xyz (Angstrom, float64) of one table row, validated; `where` names the row."""
    elements = [e.strip().strip("'\"") for e in row.Elements.strip().strip("[]").split(",")]
    try:
        xyz = np.array(row.XYZ_Ang.replace("[", " ").replace("]", " ").split(","), dtype=np.float64)
    except ValueError as err:
        raise UserError(f"{where} (Index {row.Index}), column XYZ_Ang: unreadable coordinates: "
                        f"{one_line(err)}") from None
    if not np.isfinite(xyz).all():
        raise UserError(f"{where} (Index {row.Index}), column XYZ_Ang: a coordinate is not a finite number")
    n = int(row.N_atoms)
    if len(elements) != n or xyz.size != 3 * n or not set(elements) <= set(ELEMENTS):
        raise UserError(f"{where} (Index {row.Index}) is inconsistent: N_atoms {n}, {len(elements)} Elements, "
                        f"{xyz.size} XYZ_Ang coordinates (or an element other than {', '.join(ELEMENTS)})")
    return elements, xyz.reshape(n, 3)


def targets(row, elements: list[str]) -> torch.Tensor:
    """PyG's 19 targets of one (checked) table row, (1, 19) float32."""
    y = np.zeros(19, dtype=np.float64)
    for i, col, factor in _DIRECT_TARGETS:
        y[i] = float(getattr(row, col)) * factor
    counts = np.array([elements.count(e) for e in ELEMENTS], dtype=np.float64)
    for target, refs in ATOMREFS_EV.items():
        y[target + 5] = y[target] - float(counts @ np.array(refs))
    return torch.tensor(y, dtype=torch.float32).view(1, 19)

