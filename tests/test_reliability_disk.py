"""Full disks and read-only folders: a clear WriteError, nothing partial left, the previous file intact.

Three real ways to make a write fail, each in its own process or mount so the rest of the suite is
untouched: a file-size limit (RLIMIT_FSIZE, works for any user), a small tmpfs (needs mount rights, skipped
without them) and a read-only folder (a read-only bind mount, and a folder the saving user may not write).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import raiiaf_core as rc
from conftest import FIXED_ENV, png_bytes

ROOT = Path(__file__).resolve().parent.parent
BIG = np.random.default_rng(3).standard_normal(256 * 1024).astype(np.float32)  # 1 MiB: more than the room left


def save_previous(folder: Path) -> tuple[Path, bytes]:
    path = rc.write(folder / "kept.raiiaf", image=png_bytes(), tensors={"noise": np.ones(8, np.float32)},
                    metadata={"seed": 1}, environment=FIXED_ENV)
    return path, path.read_bytes()


def attempts(folder: Path) -> dict:
    """Each kind of save of a file too big for the room left: {kind: (error type, message)}."""
    parts = dict(image=png_bytes(seed=2), tensors={"noise": BIG}, metadata={"seed": 2}, environment=FIXED_ENV)
    saves = {
        "replace": lambda: rc.write(folder / "kept.raiiaf", **parts),
        "new": lambda: rc.write(folder / "new.raiiaf", **parts),
        "exclusive": lambda: rc.write(folder / "other.raiiaf", exclusive=True, **parts),
        "numbered": lambda: rc.write_numbered(folder, "batch", **parts),
    }
    results = {}
    for kind, save in saves.items():
        try:
            save()
            results[kind] = ("saved", "")
        except Exception as exc:  # reported, so a foreign exception type fails the assertion by name
            results[kind] = (type(exc).__name__, str(exc))
    return results


def assert_clean_failure(results: dict, folder: Path, previous: bytes, reason: str) -> None:
    for kind, (error, message) in results.items():
        assert error == "WriteError", f"{kind}: {error}: {message}"
        assert reason in message and str(folder) in message, f"{kind}: {message}"
    assert (folder / "kept.raiiaf").read_bytes() == previous
    rc.verify(folder / "kept.raiiaf")
    assert sorted(os.listdir(folder)) == ["kept.raiiaf"]  # no temporary, no partial new file


# -- file-size limit --------------------------------------------------------------------------------------

LIMITED_SAVER = """
import json, resource, signal, sys
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from test_reliability_disk import attempts
# Ignored SIGXFSZ turns the over-limit write into an EFBIG error, as a full quota would be.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
print(json.dumps(attempts(Path(sys.argv[1]))))
"""


def test_file_size_limit(tmp_path):
    _, previous = save_previous(tmp_path)
    run = subprocess.run([sys.executable, "-c", LIMITED_SAVER, str(tmp_path), str(ROOT / "tests"), str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = {kind: tuple(v) for kind, v in json.loads(run.stdout).items()}
    assert_clean_failure(results, tmp_path, previous, "File too large")


# -- a full filesystem ------------------------------------------------------------------------------------

@pytest.fixture
def mounted(tmp_path):
    """mount(options) -> folder of a fresh mount there; unmounted afterwards. Skips where mounting is refused."""
    points = []

    def mount(*args):
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        run = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.skip(f"cannot mount here ({' '.join(['mount', *args])}: {run.stderr.strip() or run.returncode});"
                        " run as root with CAP_SYS_ADMIN to test this")
        points.append(point)
        return point

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    for point in reversed(points):
        subprocess.run(["umount", str(point)], check=True)


def test_full_disk(mounted):
    folder = mounted("-t", "tmpfs", "-o", "size=512k", "tmpfs")
    _, previous = save_previous(folder)
    assert_clean_failure(attempts(folder), folder, previous, "No space left on device")
    # The failed saves removed their temporaries: the space is back, and a save that fits succeeds.
    rc.write(folder / "small.raiiaf", image=png_bytes(), metadata={"seed": 3}, environment=FIXED_ENV)
    rc.verify(folder / "small.raiiaf")


# -- read-only folders ------------------------------------------------------------------------------------

def test_read_only_mount(mounted, tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    _, previous = save_previous(source)
    folder = mounted("--bind", "-o", "ro", str(source))
    if not os.statvfs(folder).f_flag & os.ST_RDONLY:
        pytest.skip("the bind mount came up writable (mount too old to apply -o ro to a bind)")
    assert_clean_failure(attempts(folder), folder, previous, "Read-only file system")
    with pytest.raises(rc.WriteError, match="cannot create the output folder"):
        rc.write_numbered(folder, "new/sub/img", image=png_bytes(), environment=FIXED_ENV)


def test_folder_the_user_may_not_write(tmp_path):
    # Root ignores permissions, so as root the save runs in a child that has dropped to 'nobody'; the
    # folder lives outside pytest's private (0700) temp folder so that user can reach it.
    folder = Path(tempfile.mkdtemp(prefix="raiiaf-readonly-"))
    try:
        os.chmod(folder, 0o755)
        _, previous = save_previous(folder)
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
            results = attempts(folder)
            os.chmod(folder, 0o755)
        else:
            results = _as_nobody(lambda: attempts(folder))
        assert_clean_failure(results, folder, previous, "Permission denied")
    finally:
        shutil.rmtree(folder)


def _as_nobody(fn):
    """fn() in a forked child running as uid/gid 65534; its JSON-able result."""
    with tempfile.TemporaryDirectory() as warm_up:
        attempts(Path(warm_up))  # imports everything a save needs while still allowed to read it
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_fd, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    return {kind: tuple(v) for kind, v in json.loads(output).items()}
