"""The demo corpus: deterministic standard-library text with a disjoint held-out split."""

from pathlib import Path

import pytest

from slimedge.demo import corpus
from slimedge.errors import SlimedgeError


def test_deterministic_and_disjoint():
    a, b = corpus.load_documents(corpus.TRAIN_MODULES), corpus.load_documents(corpus.TRAIN_MODULES)
    assert [d.name for d in a] == [d.name for d in b] and corpus.join(a) == corpus.join(b)
    held = corpus.load_documents(corpus.HELDOUT_MODULES)
    assert {d.name for d in a}.isdisjoint({d.name for d in held})
    assert len(a) > 100 and len(corpus.join(a)) > 2_000_000  # megabytes of text: enough to train on
    assert len(corpus.heldout_text()) > 50_000
    assert corpus.corpus_digest() == corpus.corpus_digest()
    # documents keep their docstrings and code, one header line each, no tabs or trailing spaces
    argparse = next(d for d in a if d.name == "argparse.py")
    assert argparse.text.startswith("# file: argparse.py\n")
    assert '"""' in argparse.text and "class ArgumentParser" in argparse.text
    assert all("\t" not in d.text and " \n" not in d.text for d in a)


def test_fake_stdlib(tmp_path: Path):
    """Resolution rules: NAME.py, NAME/__init__.py, pkg/* (sorted); missing modules skipped."""
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "b.py").write_text("B = 2\t# tab\n")
    (tmp_path / "json" / "a.py").write_text("A = 1   \n")
    (tmp_path / "re").mkdir()
    (tmp_path / "re" / "__init__.py").write_text('"""re."""\n')
    (tmp_path / "os.py").write_text("import sys\n")
    docs = corpus.load_documents(("os", "re", "json/*", "nosuchmodule"), tmp_path)
    assert [d.name for d in docs] == ["os.py", "re/__init__.py", "json/a.py", "json/b.py"]
    assert docs[2].text == "# file: json/a.py\nA = 1\n"
    assert docs[3].text == "# file: json/b.py\nB = 2   # tab\n"
    with pytest.raises(SlimedgeError, match="standard-library modules found"):
        corpus.train_text(tmp_path)
