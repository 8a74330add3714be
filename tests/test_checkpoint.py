"""density.runtime.checkpoint's format_version check: only an integer 0..FORMAT_VERSION is a version."""

import pytest
import torch

from density.runtime import checkpoint as ckpt


@pytest.mark.parametrize("version", ["1", -1, 1.0, True, None])
def test_a_format_version_that_is_not_a_version_is_refused(tmp_path, version):
    path = tmp_path / "odd.pt"
    torch.save({**{k: {} for k in ckpt.REQUIRED_KEYS}, "format_version": version}, path)
    with pytest.raises(ckpt.CheckpointError, match=r"odd\.pt: checkpoint format_version .* is not a version"):
        ckpt.load(path, required=())


@pytest.mark.parametrize("version", [0, ckpt.FORMAT_VERSION])
def test_known_versions_load(tmp_path, version):
    path = tmp_path / "ok.pt"
    torch.save({"format_version": version}, path)
    assert ckpt.load(path, required=())["format_version"] == version
