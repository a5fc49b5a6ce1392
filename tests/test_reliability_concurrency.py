"""Concurrent saves: 8 threads in each of 4 processes saving with one prefix never overwrite each other, and
readers of a file being replaced see the old or the new file, never a mix (and never call it damaged)."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import raiiaf_core as rc
from conftest import FIXED_ENV, png_bytes

TESTS = Path(__file__).resolve().parent
PROCESSES, THREADS, SAVES_PER_THREAD = 4, 8, 4

# One saving process: 8 threads released together by a barrier, each saving SAVES_PER_THREAD files.
SAVER = """
import json, sys, threading
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]).parent)]  # conftest, and raiiaf_core of this checkout
import numpy as np
import raiiaf_core as rc
from conftest import FIXED_ENV, png_bytes

folder, process, threads, saves = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
images = [png_bytes(seed=s) for s in range(3)]
saved, errors = [], []
barrier = threading.Barrier(threads)

def save(thread):
    barrier.wait()
    for i in range(saves):
        seed = process * 10_000 + thread * 100 + i
        try:
            path = rc.write_numbered(folder, "shared/batch", image=images[seed % 3],
                                     tensors={"noise": np.full(257 + seed % 5000, seed, np.float32)},
                                     metadata={"seed": seed}, environment=FIXED_ENV)
            saved.append((seed, path.name))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

print("ready", flush=True)
sys.stdin.readline()  # all processes start saving at the same moment
workers = [threading.Thread(target=save, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({"saved": saved, "errors": errors}))
"""


def test_threads_and_processes_saving_one_prefix_never_overwrite(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(TESTS), str(tmp_path), str(p), str(THREADS),
                               str(SAVES_PER_THREAD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for p in range(PROCESSES)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        reports.append(json.loads(out))

    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    saved = [tuple(s) for r in reports for s in r["saved"]]
    expected = PROCESSES * THREADS * SAVES_PER_THREAD
    assert len(saved) == expected
    folder = tmp_path / "shared"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == expected  # exactly one file per save: nothing overwritten, nothing extra
    assert sorted(name for _, name in saved) == files  # and no temporary left behind
    for seed, name in saved:
        # Each file holds what the save that reported its name wrote -- no other save replaced it.
        art = rc.verify(folder / name)
        assert art.metadata["seed"] == seed
        assert np.array_equal(art.load_tensor("noise"), np.full(257 + seed % 5000, seed, np.float32))


def test_readers_of_a_file_being_replaced_see_old_or_new_never_damage(tmp_path):
    target = tmp_path / "live.raiiaf"
    versions = {i: np.full(1000 * (1 + i % 5), i, np.float32) for i in range(6)}

    def save(i):
        rc.write(target, image=png_bytes(seed=i % 3), tensors={"noise": versions[i]}, metadata={"seed": i},
                 environment=FIXED_ENV)

    save(0)
    stop = threading.Event()
    complete, replaced, wrong = [], [], []

    def writer():
        i = 0
        while not stop.is_set():
            i = (i + 1) % len(versions)
            save(i)

    def reader():
        while not stop.is_set() or not complete:
            try:
                art = rc.verify(target)
                if np.array_equal(art.load_tensor("noise"), versions[art.metadata["seed"]]):
                    complete.append(1)
                else:
                    wrong.append("content differs from the version its metadata names")
            except rc.ReadError as exc:
                # The reader opens the path for each read; a save replacing the file in between is reported
                # as exactly that -- the file is fine, it is just not the one this Artifact started on.
                assert "replaced" in str(exc), exc
                replaced.append(1)
            except rc.RaiiafError as exc:
                wrong.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer) for _ in range(2)] + [threading.Thread(target=reader)
                                                                     for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert wrong == []
    assert len(complete) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.raiiaf"]
