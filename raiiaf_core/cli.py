"""The `raiiaf` command: inspect, verify, extract, pack, convert, diff, view, index, export, import and env.

Exit codes: 0 success; 1 a file failed verification, differs (diff) or could not be read; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .environment import capture_environment
from .errors import RaiiafError
from .layout import canonical_json
from .naming import EXTENSION
from .reader import open_artifact
from .recipe import STORAGE
from .report import (compare, environment_headline, escape, flatten, format_summary, framework_for, indented, summary,
                     to_json)

# Every line printed here that holds text from a file (names, values, error messages, which quote both) goes
# through report.escape or report.to_json: a file must not be able to write to the terminal.


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except RaiiafError as exc:
        _error(exc)
        return 1
    except BrokenPipeError:  # `raiiaf inspect ... | head` is fine
        return 0


def _error(exc: RaiiafError) -> None:
    print(f"raiiaf: {escape(exc)}", file=sys.stderr)


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

    p = sub.add_parser("convert", help="rewrite a file with its noise stored raw or as a recipe (a seed or "
                       "generator state and the sha256 of the noise, drawn again when loaded; needs torch)")
    p.add_argument("file", type=Path)
    p.add_argument("--noise", choices=STORAGE, required=True,
                   help="recipe: each noise tensor a CPU generator drew, as its checked recipe; raw: every recipe "
                   "drawn and stored as the tensor")
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write (may be FILE itself)")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("diff", help="settings, environment and tensor differences; exit 1 if they differ")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_diff)

    p = sub.add_parser("view", help="draw one picture of a file: image, noise, latents, sigma schedule, caption")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--output", type=Path, help="PNG to write (default: FILE with .view.png, next to it)")
    p.set_defaults(run=cmd_view)

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

    p = sub.add_parser("export", help="write the shareable PNG of files: the stored PNG with ComfyUI's workflow, "
                       "A1111 parameters and the whole file in a private chunk (rc.open reads it like the .raiiaf)")
    p.add_argument("files", nargs="+", type=Path)
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", type=Path, help="the PNG to write (one FILE only)")
    where.add_argument("-d", "--dir", type=Path, help="folder to write FILE-stem.png files into (default: beside "
                       "each FILE)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("import", help="make .raiiaf files of PNGs: exported ones (byte-identical), ComfyUI's "
                       "(noise rebuilt) and A1111/Forge's (settings only); folders are searched recursively")
    p.add_argument("sources", nargs="+", type=Path, metavar="PNG_OR_DIR")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder to write into (created if missing), or X.raiiaf for a single PNG")
    p.set_defaults(run=cmd_import)

    p = sub.add_parser("env", help="print the current environment as it would be recorded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_env)
    return parser


# -- inspect / verify --------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    infos, status = [], 0
    for path in args.files:
        try:
            infos.append(summary(open_artifact(path)))
        except RaiiafError as exc:
            _error(exc)
            status = 1
    if args.json:
        print(to_json(infos))
    else:
        print("\n\n".join(format_summary(i) for i in infos))
    return status


def cmd_verify(args) -> int:
    results = []
    for path in args.files:
        try:
            unchecked = open_artifact(path).verify()
            results.append({"path": str(path), "ok": True, "error": None, "unchecked": unchecked})
        except RaiiafError as exc:
            results.append({"path": str(path), "ok": False, "error": str(exc), "unchecked": []})
    if args.json:
        print(to_json(results))
    else:
        for r in results:
            print(f"OK    {escape(r['path'])}" if r["ok"] else f"FAIL  {escape(r['path'])}: {escape(r['error'])}")
            for line in r["unchecked"]:
                print(f"      unchecked: {escape(line)}")
    return 0 if all(r["ok"] for r in results) else 1


# -- extract / pack -----------------------------------------------------------------------------------

def cmd_extract(args) -> int:
    art = open_artifact(args.file)
    art.verify()
    out = args.output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RaiiafError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    stem = _stem(args.file)
    written = []
    if art.has_image:
        written.append(_write_bytes(out / f"{stem}.{ 'jpg' if art.image_format == 'jpeg' else art.image_format}",
                                    art.image_bytes()))
    if art.tensor_names:
        framework = framework_for(art.tensor_info(n).dtype for n in art.tensor_names)
        tensors = art.load_tensors(framework)
        target = out / f"{stem}.safetensors"
        if framework == "torch":
            import safetensors.torch as st
        else:
            import safetensors.numpy as st
        _write_bytes(target, st.save(tensors))
        written.append(target)
    for name, value in (("metadata", art.metadata), ("environment", art.environment)):
        text, indented = _json_file_text(value)
        written.append(_write_bytes(out / f"{stem}.{name}.json", text.encode("utf-8")))
        if not indented:
            print(f"raiiaf: {escape(written[-1])}: written compact, as stored: indented it would be over 4 times "
                  "larger (deeply nested)", file=sys.stderr)
    for path in written:
        print(escape(path))
    return 0


def _stem(path: Path) -> str:
    """The name outputs are named after: a file's name without .raiiaf (or .png, for an exported PNG)."""
    return path.name.removesuffix(EXTENSION) if path.name.endswith(EXTENSION) else path.name.removesuffix(".png")


def _json_file_text(value) -> tuple[str, bool]:
    """(text, indented): the value indented for reading, unless indenting would blow it up (report.indented);
    then the compact canonical text, as stored in the file."""
    compact = canonical_json(value).decode("utf-8")
    text = indented(value, compact, sort_keys=True)
    return (compact + "\n", False) if text is None else (text + "\n", True)


def _write_bytes(path: Path, data: bytes) -> Path:
    from .atomic import write_atomic

    return write_atomic(path, [data])


def _read_json_file(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RaiiafError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise RaiiafError(f"{path}: the {what} file is not valid JSON ({str(exc)[:200] or type(exc).__name__})") \
            from None


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
    print(escape(write(args.output, image=image, tensors=tensors, metadata=metadata, environment=environment)))
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


def cmd_convert(args) -> int:
    from .convert import convert

    done = convert(args.file, args.output, args.noise)
    for line in done.unchecked:
        print(f"raiiaf: unchecked: {escape(line)}", file=sys.stderr)
    for name, why in sorted(done.kept.items()):
        print(f"raiiaf: tensor '{escape(name)}' kept raw: {escape(why)}", file=sys.stderr)
    stored = "as recipes" if args.noise == "recipe" else "raw"
    changed = ", ".join(map(escape, done.changed)) or "none"
    print(f"{escape(done.path)}  (tensors now stored {stored}: {changed})")
    return 0


# -- diff / env ---------------------------------------------------------------------------------------

def cmd_diff(args) -> int:
    result = compare(open_artifact(args.a), open_artifact(args.b))
    print(to_json(result.to_dict()) if args.json else result)
    return 0 if result.identical else 1


def cmd_view(args) -> int:
    from .view import render

    view = render(open_artifact(args.file))
    print(_write_bytes(args.output or args.file.with_name(_stem(args.file) + ".view.png"),
                       view.png()))
    for problem in view.problems:
        print(f"raiiaf: {escape(problem)}", file=sys.stderr)
    return 1 if view.problems else 0


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


def cmd_export(args) -> int:
    from .png_share import export_png

    if args.output is not None and len(args.files) > 1:
        print("raiiaf export: -o names one PNG; give -d DIR for several files", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        target = args.output or (args.dir / f"{_stem(path)}.png" if args.dir else None)
        try:
            if args.dir is not None:
                args.dir.mkdir(parents=True, exist_ok=True)
            print(escape(export_png(path, target)))
        except RaiiafError as exc:
            _error(exc)
            status = 1
        except OSError as exc:
            _error(RaiiafError(f"{args.dir}: cannot create the output folder ({exc.strerror or exc})"))
            status = 1
    return status


def cmd_import(args) -> int:
    from .png_import import KINDS, import_pngs

    def show(done: int, total: int, result) -> None:
        if result.kind is not None:
            line = f"OK    {escape(result.source)} -> {escape(result.output)} ({KINDS[result.kind]}: {escape(result.message)})"
        else:
            line = f"{'FAIL' if result.failed else 'SKIP'}  {escape(result.message)}"
        print(f"[{done}/{total}] {line}", flush=True)

    report = import_pngs(args.sources, args.output, progress=show)
    print(report.format())
    return 1 if report.failed or not report.imported else 0


def cmd_env(args) -> int:
    env = capture_environment()
    if args.json:
        print(to_json(env))
    else:
        print(escape(environment_headline(env)))
        for key, value in sorted(flatten(env).items()):
            print(f"  {escape(key)} = {escape(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
