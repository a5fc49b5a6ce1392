"""The `raiiaf` command: inspect, verify, extract, pack, diff and env.

Exit codes: 0 success; 1 a file failed verification, differs (diff) or could not be read; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .drift import drift
from .environment import capture_environment
from .errors import RaiiafError
from .reader import open_artifact

NEEDS_TORCH = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except RaiiafError as exc:
        print(f"raiiaf: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `raiiaf inspect ... | head` is fine
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raiiaf", description="Reproducible AI image files (.raiiaf).")
    parser.add_argument("--version", action="version", version=f"raiiaf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="summarise files: image, tensors, model, prompt, seed, sampler, environment")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON document (a list, one object per file)")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("verify", help="check every checksum and part; exit 1 if any file fails")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("extract", help="write the image, the tensors (.safetensors), metadata and environment (JSON)")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write into (created if missing)")
    p.set_defaults(run=cmd_extract)

    p = sub.add_parser("pack", help="build a .raiiaf from an image, a .safetensors file and a JSON metadata file")
    p.add_argument("--image", type=Path, required=True, help="PNG, WebP or JPEG file (stored as is)")
    p.add_argument("--tensors", type=Path, help=".safetensors file whose tensors are stored")
    p.add_argument("--metadata", type=Path, help="JSON file with the generation metadata (schema in docs/FORMAT.md)")
    p.add_argument("--environment", type=Path, help="JSON environment to store instead of capturing this one")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(run=cmd_pack)

    p = sub.add_parser("diff", help="settings, environment and tensor differences; exit 1 if they differ")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_diff)

    p = sub.add_parser("index", help="write a Parquet index of .raiiaf files in folders or fsspec URLs (s3://, gs://, "
                       "https://); a re-run reads only what changed")
    p.add_argument("sources", nargs="*", metavar="PATH_OR_URL", help="files, folders (searched recursively), URLs")
    p.add_argument("-o", "--output", type=Path, help="the index (.parquet); an existing one is updated")
    p.add_argument("--workers", type=int, help="concurrent reads (default 4 for local files, 32 for URLs)")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    p.add_argument("-O", "--storage-option", action="append", metavar="KEY=VALUE",
                   help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000 or anon=true (JSON values allowed)")
    p.add_argument("--environment-key", action="store_true",
                   help="print this machine's environment_key (to compare with the index's column) and exit")
    p.set_defaults(run=cmd_index)

    p = sub.add_parser("env", help="print the current environment as it would be recorded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_env)
    return parser


# -- inspect ------------------------------------------------------------------------------------------

def summary(art) -> dict:
    """What `inspect --json` prints for one file; stable keys for scripts."""
    image = None
    if art.has_image:
        size = art.image_size
        image = {"format": art.image_format, "width": size[0] if size else None, "height": size[1] if size else None,
                 "bytes": next(c.length for c in art.chunks if c.type == "image")}
    return {
        "path": art.name,
        "format_version": f"{art.version[0]}.{art.version[1]}",
        "size": os.path.getsize(art.path) if art.path else None,
        "image": image,
        "tensors": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)}
                    for i in map(art.tensor_info, art.tensor_names)],
        "metadata": art.metadata,
        "environment": art.environment,
    }


def format_summary(info: dict) -> str:
    meta, env = info["metadata"], info["environment"]
    lines = [f"{info['path']}  (raiiaf {info['format_version']}, {info['size']:,} bytes)" if info["size"] is not None
             else f"{info['path']}  (raiiaf {info['format_version']})"]
    image = info["image"]
    lines.append(f"  image:       {image['format']} {image['width']}x{image['height']}, {image['bytes']:,} bytes"
                 if image else "  image:       none")
    for i, t in enumerate(info["tensors"]):
        label = "tensors:" if i == 0 else ""
        lines.append(f"  {label:<12} {t['name']}  {t['dtype']} {tuple(t['shape'])}")
    model = _object(meta.get("model"))
    model_name = model.get("name") or model.get("id") or model.get("path")
    for label, value in (("model", model_name), ("prompt", meta.get("prompt")),
                         ("negative", meta.get("negative_prompt"))):
        if value:
            lines.append(f"  {label + ':':<12} {value}")
    settings = [f"{k} {meta[k]}" for k in ("seed", "sampler", "scheduler", "steps", "guidance_scale") if k in meta]
    if "width" in meta and "height" in meta:
        settings.append(f"size {meta['width']}x{meta['height']}")
    if "batch" in meta:
        batch = _object(meta["batch"])
        settings.append(f"batch {batch.get('index')}/{batch.get('size')}")
    if settings:
        lines.append(f"  {'settings:':<12} " + ", ".join(settings))
    noise = _object(meta.get("noise"))
    if noise:
        lines.append(f"  {'noise:':<12} {noise.get('tensor')} ({noise.get('source')})")
    if isinstance(meta.get("tags"), list) and meta["tags"]:
        lines.append(f"  {'tags:':<12} " + ", ".join(map(str, meta["tags"])))
    lines.append(f"  {'environment:':<12} {environment_headline(env)}")
    return "\n".join(lines)


def _object(value) -> dict:
    # Files from other writers may break the schema (the reader does not enforce it): show what is readable.
    return value if isinstance(value, dict) else {}


def environment_headline(env: dict) -> str:
    if not env:
        return "not recorded"
    parts = []
    torch = _object(env.get("torch"))
    if torch.get("version"):
        parts.append(f"torch {torch['version']} (CUDA {torch.get('cuda') or 'none'})")
    gpus = env.get("gpu") if isinstance(env.get("gpu"), list) else []
    parts.append("GPU " + ", ".join(str(_object(g).get("name", "?")) for g in gpus) if gpus else "no GPU")
    if _object(env.get("python")).get("version"):
        parts.append(f"Python {env['python']['version']}")
    os_info = _object(env.get("os"))
    if os_info:
        parts.append(f"{os_info.get('system', '?')} {os_info.get('machine', '')}".strip())
    return ", ".join(parts)


def cmd_inspect(args) -> int:
    infos, status = [], 0
    for path in args.files:
        try:
            infos.append(summary(open_artifact(path)))
        except RaiiafError as exc:
            print(f"raiiaf: {exc}", file=sys.stderr)
            status = 1
    if args.json:
        print(json.dumps(infos, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_summary(i) for i in infos))
    return status


# -- verify -------------------------------------------------------------------------------------------

def cmd_verify(args) -> int:
    results = []
    for path in args.files:
        try:
            open_artifact(path).verify()
            results.append({"path": str(path), "ok": True, "error": None})
        except RaiiafError as exc:
            results.append({"path": str(path), "ok": False, "error": str(exc)})
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(f"OK    {r['path']}" if r["ok"] else f"FAIL  {r['path']}: {r['error']}")
    return 0 if all(r["ok"] for r in results) else 1


# -- extract / pack -----------------------------------------------------------------------------------

def _framework_for(dtypes) -> str:
    return "torch" if any(d in NEEDS_TORCH for d in dtypes) else "numpy"


def cmd_extract(args) -> int:
    art = open_artifact(args.file)
    art.verify()
    out = args.output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RaiiafError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    stem = args.file.name.removesuffix(".raiiaf")
    written = []
    if art.has_image:
        written.append(_write_bytes(out / f"{stem}.{ 'jpg' if art.image_format == 'jpeg' else art.image_format}",
                                    art.image_bytes()))
    if art.tensor_names:
        framework = _framework_for(art.tensor_info(n).dtype for n in art.tensor_names)
        tensors = art.load_tensors(framework)
        target = out / f"{stem}.safetensors"
        if framework == "torch":
            import safetensors.torch as st
        else:
            import safetensors.numpy as st
        _write_bytes(target, st.save(tensors))
        written.append(target)
    for name, value in (("metadata", art.metadata), ("environment", art.environment)):
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        written.append(_write_bytes(out / f"{stem}.{name}.json", text.encode("utf-8")))
    for path in written:
        print(path)
    return 0


def _write_bytes(path: Path, data: bytes) -> Path:
    from .atomic import write_atomic

    return write_atomic(path, [data])


def _read_json_file(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RaiiafError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise RaiiafError(f"{path}: the {what} file is not valid JSON ({exc})") from None


def cmd_pack(args) -> int:
    from .writer import write

    try:
        image = args.image.read_bytes()
    except OSError as exc:
        raise RaiiafError(f"{args.image}: cannot read the image ({exc.strerror or exc})") from None
    tensors = {}
    if args.tensors:
        tensors = _load_safetensors_file(args.tensors)
    metadata = _read_json_file(args.metadata, "metadata") if args.metadata else {}
    environment = _read_json_file(args.environment, "environment") if args.environment else None
    print(write(args.output, image=image, tensors=tensors, metadata=metadata, environment=environment))
    return 0


def _load_safetensors_file(path: Path) -> dict:
    import safetensors.numpy

    try:
        return safetensors.numpy.load_file(str(path))
    except Exception as numpy_exc:
        try:  # numpy has no bfloat16; torch reads those files, when it is installed
            import safetensors.torch

            return safetensors.torch.load_file(str(path))
        except Exception:
            raise RaiiafError(f"{path}: not a readable .safetensors file ({numpy_exc})") from None


# -- diff / env ---------------------------------------------------------------------------------------

def _flat(value, prefix=""):
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


def compare(a, b) -> dict:
    """Differences between two artifacts: metadata fields, environment drift, tensors and image."""
    meta_a, meta_b = _flat(a.metadata), _flat(b.metadata)
    settings = [{"key": k, "a": meta_a.get(k), "b": meta_b.get(k)}
                for k in sorted(set(meta_a) | set(meta_b)) if meta_a.get(k) != meta_b.get(k)]
    tensors = []
    for name in sorted(set(a.tensor_names) | set(b.tensor_names)):
        tensors.append(_compare_tensor(a, b, name))
    image_equal = (a.image_bytes() == b.image_bytes()) if a.has_image and b.has_image else a.has_image == b.has_image
    report = drift(a.environment, b.environment)
    return {
        "a": a.name, "b": b.name,
        "identical": not settings and not report.differences and image_equal
                     and all(t["status"] == "equal" for t in tensors),
        "settings": settings,
        "environment": report.to_dict(),
        "tensors": tensors,
        "image_equal": image_equal,
    }


def _compare_tensor(a, b, name: str) -> dict:
    if name not in a.tensor_names or name not in b.tensor_names:
        return {"name": name, "status": "only in a" if name in a.tensor_names else "only in b"}
    ia, ib = a.tensor_info(name), b.tensor_info(name)
    if ia.shape != ib.shape or ia.dtype != ib.dtype:
        return {"name": name, "status": "different shape or dtype",
                "a": [ia.dtype, list(ia.shape)], "b": [ib.dtype, list(ib.shape)]}
    if a.tensor_bytes(name) == b.tensor_bytes(name):
        return {"name": name, "status": "equal"}
    framework = _framework_for([ia.dtype])
    ta, tb = a.load_tensor(name, framework), b.load_tensor(name, framework)
    if framework == "torch":
        diff = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
    else:
        import numpy as np

        diff = float(np.max(np.abs(ta.astype(np.float64) - tb.astype(np.float64)))) if ta.size else 0.0
    return {"name": name, "status": "different", "max_abs_diff": diff}


def cmd_diff(args) -> int:
    a, b = open_artifact(args.a), open_artifact(args.b)
    result = compare(a, b)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        return 0 if result["identical"] else 1
    if result["identical"]:
        print("identical settings, environment, tensors and image")
        return 0
    for s in result["settings"]:
        print(f"setting  {s['key']}: {s['a']!r} -> {s['b']!r}")
    for t in result["tensors"]:
        detail = f" (max abs diff {t['max_abs_diff']:.6g})" if "max_abs_diff" in t else ""
        print(f"tensor   {t['name']}: {t['status']}{detail}")
    print(f"image    {'equal' if result['image_equal'] else 'different'}")
    print(drift(a.environment, b.environment))
    return 1


def cmd_index(args) -> int:
    from . import index

    if args.environment_key:
        print(index.environment_key())
        return 0
    if not args.sources or args.output is None:
        print("raiiaf index: give PATH_OR_URL... and -o INDEX.parquet", file=sys.stderr)
        return 2
    report = index.build_index(args.sources, args.output, workers=args.workers, progress=args.progress or None,
                               storage_options=index.parse_storage_options(args.storage_option))
    print(report.format())
    return 1 if report.errors else 0


def cmd_env(args) -> int:
    env = capture_environment()
    if args.json:
        print(json.dumps(env, indent=2, ensure_ascii=False))
    else:
        print(environment_headline(env))
        for key, value in sorted(_flat(env).items()):
            print(f"  {key} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
