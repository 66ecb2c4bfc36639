"""bench/make_imbalanced.py: the rarest class is about 5% of the instances, and the build is deterministic."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "make_imbalanced", Path(__file__).resolve().parents[1] / "bench" / "make_imbalanced.py")
mi = importlib.util.module_from_spec(_SPEC)  # loaded by path: bench/ stays off sys.path for the other tests
_SPEC.loader.exec_module(mi)
CLASS_NAMES, DEFAULT_SHARES, class_counts, class_p, make = (
    mi.CLASS_NAMES, mi.DEFAULT_SHARES, mi.class_counts, mi.class_p, mi.make)
N_TRAIN, N_VAL, SIZE = 160, 16, 128


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "data.yaml"}  # data.yaml names its own absolute path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make(tmp_path_factory.mktemp("imb") / "a", N_TRAIN, N_VAL, img_size=SIZE).parent


def test_rarest_class_is_about_five_percent(built: Path) -> None:
    counts = class_counts(built, "train")
    rarest = min(range(len(counts)), key=counts.__getitem__)
    assert CLASS_NAMES[rarest] == "spur" and DEFAULT_SHARES[rarest] == min(DEFAULT_SHARES)
    assert 0.02 <= counts[rarest] / sum(counts) <= 0.08, counts
    assert counts[0] / sum(counts) > 0.25  # the skew is there: the commonest class is about 30%


def test_deterministic_and_cached(built: Path, tmp_path: Path) -> None:
    again = make(tmp_path / "b", N_TRAIN, N_VAL, img_size=SIZE).parent
    assert _snapshot(again) == _snapshot(built)
    before = (built / ".complete").stat().st_mtime_ns
    make(built, N_TRAIN, N_VAL, img_size=SIZE)  # a complete build with the same parameters is left alone
    assert (built / ".complete").stat().st_mtime_ns == before


def test_bad_shares_are_refused() -> None:
    with pytest.raises(ValueError):
        class_p([1, 2, 3])
    with pytest.raises(ValueError):
        class_p([0] * len(CLASS_NAMES))
