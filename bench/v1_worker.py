"""Drive the PyPI library raiiaf 1.1.0 for the benchmarks, inside that library's own venv.

The old library pins its own dependencies (torch, zfpy, pynvml), so it never runs in the project's
environment: bench/bench_format.py starts this script with the v1 venv's Python, sends one JSON request
on stdin and reads one JSON answer on stdout. Timing happens here, so process start-up and imports are
not charged to the library. Requests:

  {"op": "write", "items": [{"png": PATH, "tensor": NPY_PATH, "out": PATH, "compress": bool, "fields": {...}}]}
      -> {"results": [{"size": int} | {"error": str}]}
  {"op": "scan", "paths": [PATH, ...], "repeats": int}
      -> {"seconds": [float per pass], "bytes_read": int (one pass, all files) | null}
"""

import contextlib
import json
import os
import sys
import time
import warnings


def rchar():
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None


def write(handler, items):
    import numpy as np

    inputs, results = {}, []
    for item in items:
        if item["png"] not in inputs:
            with open(item["png"], "rb") as f:
                inputs[item["png"]] = f.read()
        if item["tensor"] not in inputs:
            inputs[item["tensor"]] = np.load(item["tensor"])
        try:
            # convert_float16=False: the library's default (True) crashes in zfpy and is lossy anyway.
            handler.file_encoder(item["out"], latent={"noise": inputs[item["tensor"]]}, chunk_records=[],
                                 img_binary=inputs[item["png"]], should_compress=item["compress"],
                                 convert_float16=False, **item["fields"])
        except Exception as exc:  # reported per file: the caller prints what the library did
            results.append({"error": f"{type(exc).__name__}: {exc}"})
            continue
        results.append({"size": os.path.getsize(item["out"])})
    return {"results": results}


def scan(handler, paths, repeats):
    seconds, bytes_read = [], None
    for _ in range(repeats):
        before = rchar()
        start = time.perf_counter()
        for path in paths:
            # file_decoder is the library's only reader: it decodes every chunk to return the manifest.
            handler.file_decoder(path)["metadata"]
        seconds.append(time.perf_counter() - start)
        after = rchar()
        if before is not None and after is not None:
            bytes_read = after - before
    return {"seconds": seconds, "bytes_read": bytes_read}


def main():
    request = json.load(sys.stdin)
    # The library prints debug lines on stdout and warns about environment differences on every read;
    # stdout is reserved for the answer.
    warnings.simplefilter("ignore")
    answer_stream = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        from raiiaf import raiiafFileHandler

        handler = raiiafFileHandler()
        if request["op"] == "write":
            answer = write(handler, request["items"])
        elif request["op"] == "scan":
            answer = scan(handler, request["paths"], request["repeats"])
        else:
            raise SystemExit(f"unknown op {request['op']!r}")
    json.dump(answer, answer_stream)


if __name__ == "__main__":
    main()
