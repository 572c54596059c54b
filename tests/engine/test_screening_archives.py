"""Archives whose members lie about their size, or are damaged, are refused in plain words,
a chunk in, whatever they would unpack to."""

from __future__ import annotations

import re
import tracemalloc
import zipfile

import numpy as np
import pytest

from tests import hostile
from webapp.engine import datasets, formats, screening
from webapp.engine.errors import DatasetRejected, ModelRejected
from webapp.engine.loading import InputSpec

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

# Words of Python's or zlib's own errors, which a user must never be shown.
LIBRARY_WORDS = ("BadZipFile", "zlib", "Error", "CRC-32", "Bad magic")
INPUTS = [InputSpec("x", [None, 4])]
# What refusing a bomb of a gigabyte or more may allocate: a few chunks.
BOUND = 1 << 20


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """An honest TorchScript archive and an honest .pt2 program."""
    folder = tmp_path_factory.mktemp("archives")
    module = torch.nn.Linear(4, 2)
    scripted, exported = folder / "linear.pt", folder / "linear.pt2"
    torch.jit.save(torch.jit.script(module), str(scripted))
    torch.export.save(torch.export.export(module, (torch.randn(2, 4),)), str(exported))
    return {"torchscript": scripted, "exported_program": exported}


def _plain(refused: pytest.ExceptionInfo) -> str:
    message = str(refused.value)
    assert not [word for word in LIBRARY_WORDS if word in message], message
    return message


def _refused_within(memory: int, error: type[Exception], action) -> str:
    """The message of the `error` that `action` raises, allocating less than `memory`."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as refused:
            action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < memory, peak
    return _plain(refused)


def test_torchscript_member_inflating_past_its_size_is_refused_a_chunk_in(archives, tmp_path):
    """Does a 2.6 MB upload whose constants.pkl declares a few bytes but inflates to
    2.5 GiB cost the sandbox more than a few chunks of memory?"""
    bomb = hostile.zip_understating(archives["torchscript"], tmp_path / "bomb.pt", "/constants.pkl", 2560)
    assert bomb.stat().st_size < 3 << 20
    screening.check_zip(bomb, 1 << 20)  # its directory looks honest
    assert formats.detect_format(bomb) == formats.TORCHSCRIPT
    message = _refused_within(BOUND, ModelRejected, lambda: screening.check_torchscript(bomb))
    assert re.fullmatch(
        r"The archive is corrupt: 'constants\.pkl' unpacks to more than the \d+ bytes it declares\.", message
    ), message


def test_pt2_weights_inflating_past_their_size_are_refused_before_torch_reads_them(archives, tmp_path):
    """Weights are read by torch.export.load alone, by their declared size: the screen
    unpacks every member first."""
    with zipfile.ZipFile(archives["exported_program"]) as archive:
        weights = next(n for n in archive.namelist() if "/data/weights/" in n and "config" not in n)
    bomb = hostile.zip_understating(archives["exported_program"], tmp_path / "bomb.pt2", weights, 1024)
    message = _refused_within(BOUND, ModelRejected, lambda: screening.check_exported_program(bomb))
    assert re.fullmatch(
        r"The archive is corrupt: '.+' unpacks to more than the \d+ bytes it declares\.", message
    ), message


@pytest.mark.parametrize(
    ("member", "how", "words"),
    [
        ("/data/0", "checksum", "'data/0' does not match its checksum"),
        ("/data.pkl", "packed", "the packed data of 'data.pkl' is damaged"),
        ("/constants.pkl", "packed", "the packed data of 'constants.pkl' is damaged"),
    ],
)
def test_damaged_torchscript_members_are_refused_in_plain_words(archives, tmp_path, member, how, words):
    damaged = hostile.zip_damaged(archives["torchscript"], tmp_path / "damaged.pt", member, how)
    screening.check_zip(damaged, 1 << 20)  # damage its directory does not show
    with pytest.raises(ModelRejected) as refused:
        screening.check_torchscript(damaged)
    assert _plain(refused) == f"The archive is corrupt: {words}."


def test_an_unreadable_list_of_files_is_refused_in_plain_words(archives, tmp_path):
    blob = bytearray(archives["torchscript"].read_bytes())
    entry = blob.rfind(b"PK\x01\x02")
    blob[entry : entry + 4] = b"JUNK"
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(blob)
    with pytest.raises(ModelRejected) as refused:
        screening.check_zip(damaged, 1 << 20)
    assert _plain(refused) == "The archive is corrupt: its list of files cannot be read."


def test_a_damaged_format_marker_is_refused_in_plain_words(archives, tmp_path):
    """The .pt2 marker is read to tell the format, before any other screen."""
    program = archives["exported_program"]
    damaged = hostile.zip_damaged(program, tmp_path / "d.pt2", "/archive_format", "packed")
    with pytest.raises(ModelRejected) as refused:
        formats.detect_format(damaged)
    assert _plain(refused) == "The archive is corrupt: the packed data of 'archive_format' is damaged."


def test_honest_archives_still_pass(archives):
    screening.check_torchscript(archives["torchscript"])
    screening.check_exported_program(archives["exported_program"])
    assert formats.detect_format(archives["exported_program"]) == formats.EXPORTED_PROGRAM


# Evaluation data ----------------------------------------------------------------------------


def test_npz_array_inflating_past_its_size_is_refused_at_its_header(tmp_path):
    honest = hostile.npz(tmp_path / "eval.npz", x=np.zeros((8, 4), dtype=np.float32))
    bomb = hostile.zip_understating(honest, tmp_path / "bomb.npz", "x.npy", 1024)
    message = _refused_within(
        BOUND, DatasetRejected, lambda: screening.check_npz(bomb, datasets.MEMBERS, 1 << 20)
    )
    assert message.startswith("The evaluation data is corrupt: 'x.npy' unpacks to more than the "), message


def test_npz_array_inflating_past_its_size_is_refused_when_loaded(tmp_path):
    """A member larger than a chunk passes the header screen; loading reads it to its end."""
    x = np.zeros((2 * screening.CHUNK // 16, 4), dtype=np.float32)
    honest = hostile.npz(tmp_path / "eval.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    bomb = hostile.zip_understating(honest, tmp_path / "bomb.npz", "x.npy", 1024)
    assert [s.as_dict() for s in datasets.input_specs(bomb)] == [
        {"name": "x", "shape": [None, 4], "dtype": "float32"}
    ]
    message = _refused_within(BOUND, DatasetRejected, lambda: datasets.load_npz(bomb, INPUTS))
    assert message.startswith("The evaluation data is corrupt: 'x.npy' unpacks to more than the "), message
    assert datasets.load_npz(honest, INPUTS).count == len(x)


def test_npz_array_failing_its_checksum_is_refused_when_loaded(tmp_path):
    honest = hostile.npz(tmp_path / "eval.npz", x=np.ones((8, 4), dtype=np.float32))
    damaged = hostile.zip_damaged(honest, tmp_path / "damaged.npz", "x.npy", "checksum")
    with pytest.raises(DatasetRejected) as refused:
        datasets.load_npz(damaged, INPUTS)
    assert _plain(refused) == "The evaluation data is corrupt: 'x.npy' does not match its checksum."


@pytest.mark.parametrize(
    "arrays, words",
    [
        # Zeros compress a thousandfold: a small upload that would unpack to 100 MB.
        ({"x": np.zeros((datasets.MAX_SAMPLES + 1, 4), np.float32)}, "between 1 and"),
        ({"x": np.zeros((50_000, 4, 2), np.float32)}, "has 2 dimensions"),
        ({"x": np.zeros((50_000, 5), np.float32)}, "dimension 1 is 5, not 4"),
        ({"x": np.zeros((50_000, 4), np.float32), "y": np.zeros(7, np.int64)}, "one label per sample"),
    ],
)
def test_npz_arrays_of_the_wrong_shape_are_refused_before_they_are_unpacked(tmp_path, arrays, words):
    out = tmp_path / "zeros.npz"
    np.savez_compressed(out, **arrays)
    assert out.stat().st_size < BOUND
    message = _refused_within(BOUND, DatasetRejected, lambda: datasets.load_npz(out, INPUTS))
    assert words in message, message
