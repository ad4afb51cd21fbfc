"""The ``mmzoo`` command: list | pull | info | demo | data | features | train | eval | predict | export | convert |
serve | chat | bench.

Errors the user can fix print one line naming the file, key or argument and exit with status 2, without a
traceback: bad configs and unknown names (``ConfigError``, ``UnknownNameError``), weights and checkpoints that cannot
be read or do not fit (``WeightsError``), bad data (``DataError``), a non-finite loss or weight
(``FloatingPointError``), and file-system failures (``OSError``: a missing file, a read-only or full disk, with the
path). ``--debug`` (or ``MMZOO_DEBUG=1``) shows the traceback instead.

Loading never runs code a file names: ``--trust-imports`` (predict, eval, export, chat) lets an export's or
checkpoint's ``imports`` list be imported, which runs those modules — only for files from a trusted source.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

__all__ = ["main"]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _cmd_list(args) -> int:
    import zoo  # noqa: PLC0415
    from zoo.catalog import load_model_config  # noqa: PLC0415

    if args.parts:
        rows = [[kind, ", ".join(reg.names()) or "-"] for kind, reg in zoo.REGISTRIES.items()]
        print(_table(rows, ["registry", "names"]))
        return 0
    if args.tasks:
        from zoo.catalog import task_config_names, task_config_path  # noqa: PLC0415
        from zoo.spec import load_yaml  # noqa: PLC0415

        tasks = task_config_names(args.pattern)
        if not tasks:
            print(f"no task config matches {args.pattern!r}; task configs: {', '.join(task_config_names())}",
                  file=sys.stderr)
            return 1
        cfgs = {name: load_yaml(task_config_path(name)) for name in tasks}
        print(_table([[name, cfg.get("task", "?"), (cfg.get("model") or {}).get("name", "?")]
                      for name, cfg in cfgs.items()], ["task config", "task", "model"]))
        return 0
    names = zoo.list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; registered: {', '.join(zoo.list_models())}", file=sys.stderr)
        return 1
    if args.pretrained:
        return _list_pretrained(names)
    rows = []
    for name in names:
        cfg = load_model_config(name)
        params = _human(zoo.model_info(name)["params"]) if args.params else ""
        row = [name, cfg["model"].get("type", "?"), ", ".join(sorted(cfg.get("tasks") or {})) or "-",
               cfg.get("default_resolution", "-"), cfg.get("description", "")]
        rows.append(row[:2] + ([params] if args.params else []) + row[2:])
    header = ["name", "type"] + (["params"] if args.params else []) + ["tasks", "resolution", "description"]
    print(_table(rows, header))
    return 0


def _list_pretrained(names: list[str]) -> int:
    from zoo.weights import cached_export, pretrained_table  # noqa: PLC0415

    rows = []
    for name in names:
        for tag, entry in pretrained_table(name).items():
            scores = ", ".join(f"{k} {v}" for k, v in (entry.scores or {}).items()) or "-"
            size = f"{entry.size / 2**20:,.0f} MiB" if entry.size else "-"
            rows.append([name, tag + (" *" if entry.default else ""), entry.task or "-", entry.resolution or "-", size,
                         "yes" if cached_export(entry) else "no", scores])
    if not rows:
        print("no model of these lists official weights (a 'pretrained:' table in its model file)", file=sys.stderr)
        return 1
    print(_table(rows, ["model", "tag", "task", "resolution", "size", "cached", "scores (published)"]))
    print("* the tag pretrained='official' picks for its task; mmzoo pull MODEL --tag TAG fetches one")
    return 0


def _cmd_pull(args) -> int:
    from zoo.weights import download_path, pretrained_export  # noqa: PLC0415

    folder, entry = pretrained_export(args.name, args.tag, args.task, progress=None if not args.quiet else False)
    print(f"{args.name} {entry.tag} (task {entry.task or '-'}, {entry.resolution or '-'} px): {folder}")
    if entry.url is not None:
        print(f"official file: {download_path(entry)}")
    return 0


def _cmd_info(args) -> int:
    import zoo  # noqa: PLC0415

    info = zoo.model_info(args.name, task=args.task)
    rows = [
        ["name", info["name"]],
        ["description", info["description"] or "-"],
        ["model type", info["model_type"]],
        ["task", info["task"] or "(base model)"],
        ["task variants", ", ".join(info["tasks"]) or "-"],
        ["trains on", ", ".join(info["supported_tasks"]) or "-"],
        ["default resolution", info["default_resolution"] or "-"],
        ["parameters", f"{info['params']:,}"],
        ["trainable", f"{info['trainable_params']:,}"],
        ["config", info["file"] or "-"],
    ]
    print(_table(rows, ["field", "value"]))
    print()
    print(_table([[k, v["type"], f"{v['params']:,}"] for k, v in info["parts"].items()], ["part", "type", "parameters"]))
    return 0


def _cmd_demo(args) -> int:
    from zoo.demo import run_demo  # noqa: PLC0415

    run_demo(model_name=args.model, question=args.question, image=args.image, overrides=args.set)
    return 0


def _bench_train(args) -> int:
    """``mmzoo bench train NAME``: the step and its phases; ``--memory``: each configuration in its own process (its
    own peak resident memory): batch 8 and 32, with and without gradient checkpointing, fp32 and bf16."""
    import json  # noqa: PLC0415

    from zoo.bench import bench_train, bench_train_child, format_train_table  # noqa: PLC0415

    if not args.name:
        raise SystemExit("mmzoo bench train: give a model name (mmzoo list shows them)")
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.child:
        print(json.dumps(bench_train(args.name, args.task, args.batch, args.image_size, args.tokens, args.repeat or 3,
                                     args.dtype, args.grad_checkpointing, args.compile)))
        return 0
    if args.official:
        from zoo.bench import bench_train_vs_official, format_official_comparison  # noqa: PLC0415

        if not args.official_python:
            raise SystemExit("mmzoo bench train: --official needs --official-python (a venv that imports the official "
                             "code)")
        result = bench_train_vs_official(args.name, args.official, args.official_python, args.batch,
                                         args.image_size, args.tokens, args.repeat or 3, log=say)
        print(format_official_comparison(result))
        return 0
    if not args.memory:
        rows = [bench_train(args.name, args.task, args.batch, args.image_size, args.tokens, args.repeat or 3,
                            args.dtype, args.grad_checkpointing, args.compile, log=say)]
    else:
        rows = []
        for batch, ckpt, dtype in [(8, False, "float32"), (8, True, "float32"), (8, False, "bfloat16"),
                                   (32, False, "float32"), (32, True, "float32"), (32, False, "bfloat16")]:
            say(f"batch {batch}, grad checkpointing {'on' if ckpt else 'off'}, {dtype}: own process")
            try:
                rows.append(bench_train_child(args.name, args.task, batch, args.image_size, args.tokens,
                                              args.repeat or 2, dtype, ckpt))
            except RuntimeError as exc:
                say(f"  failed: {exc}")
    print(format_train_table(rows))
    if args.memory and len(rows) >= 2:
        fp32 = {r["batch"]: r["peak_rss"] for r in rows if r["dtype"] == "float32" and not r["grad_checkpointing"]}
        if 8 in fp32 and 32 in fp32 and fp32[32] > fp32[8]:
            per = (fp32[32] - fp32[8]) / 24
            fits = int((24 * 2**30 - (fp32[8] - 8 * per)) // per)
            print(f"\n- fp32 without checkpointing: {per / 2**20:.0f} MiB per sample above a fixed "
                  f"{(fp32[8] - 8 * per) / 2**30:.2f} GiB: about {fits} samples fit 24 GiB (a linear extrapolation "
                  "of the two measured batches)")
    return 0


def _cmd_bench(args) -> int:
    if args.what == "attention":
        from zoo.bench import bench_attention, format_attention_table  # noqa: PLC0415
        import torch  # noqa: PLC0415

        lengths = [int(x) for x in args.lengths.split(",")]
        args.repeat = args.repeat or 10
        rows = bench_attention(lengths, args.batch, args.heads, args.head_dim, args.repeat, args.device, args.dtype,
                               args.backward)
        what = "forward+backward" if args.backward else "forward"
        header = (f"Attention {what}, batch {args.batch}, {args.heads} heads × {args.head_dim}, {args.dtype}, "
                  f"{args.device} (torch {torch.__version__}, {torch.get_num_threads()} threads); median of "
                  f"{args.repeat} runs")
        print(format_attention_table(rows, header))
        return 0
    if args.what == "model":
        from zoo.bench import bench_model, format_model_table  # noqa: PLC0415

        if not args.name:
            raise SystemExit("mmzoo bench model: give a model name (mmzoo list shows them)")
        result = bench_model(args.name, batch=args.batch, image_size=args.image_size, tokens=args.tokens,
                             repeat=args.repeat or 3, backward=not args.forward_only,
                             log=lambda text: print(text, file=sys.stderr, flush=True))
        print(format_model_table(result))
        return 0
    if args.what == "train":
        return _bench_train(args)
    if args.what == "video":
        import torch  # noqa: PLC0415

        from zoo.bench import bench_video, bench_video_step, format_video_table, video_backends  # noqa: PLC0415
        from zoo.data.shapes import generate_shapes  # noqa: PLC0415

        if not video_backends():
            raise SystemExit("mmzoo bench video: no video reader installed (pip install 'mmzoo[video]')")
        clips = sorted((generate_shapes() / "videos").glob("**/*.mp4"))
        if not clips:
            raise SystemExit("mmzoo bench video: the shapes dataset has no videos")
        args.repeat = args.repeat or 3
        rows = bench_video(clips, num_frames=args.frames, repeat=args.repeat)
        step = None if args.no_step else bench_video_step(args.name or "videoqa-shapes")
        print(format_video_table(rows, step, f"Video decoding, {torch.get_num_threads()} threads; median of "
                                             f"{args.repeat} runs"))
        return 0
    raise SystemExit(f"mmzoo bench: unknown benchmark {args.what!r}")


def _cmd_train(args) -> int:
    from zoo.train.run import train  # noqa: PLC0415

    if args.resume and args.overwrite:
        raise SystemExit("mmzoo train: --resume continues the run, --overwrite replaces it: give one")
    results = train(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    rows = []
    for split in ("val", "test"):
        for key, value in (results.get(split) or {}).items():
            rows.append([split, key, f"{value:.2f}" if isinstance(value, float) else value])
    if rows:
        print(_table(rows, ["split", "metric", "value"]))
    print(f"run folder: {results['run_dir']}" + (f"  export: {results['export']}" if results.get("export") else ""))
    return 0


def _cmd_config(args) -> int:
    print(resolved_config_yaml(args.config, args.overrides), end="")
    return 0


def resolved_config_yaml(config: str, overrides: Sequence[str] = ()) -> str:
    """The task config ``config`` with ``overrides`` applied and checked (as ``mmzoo train`` loads it), then under
    ``resolved_model`` the model config it builds: the model file's tree for ``model.task`` with ``model.overrides``
    applied (a data tokenizer, ``text.tokenizer: data``, is resolved only when a run reads the data)."""
    import yaml  # noqa: PLC0415

    from zoo.factory import resolve_config  # noqa: PLC0415
    from zoo.train.run import load_task_config  # noqa: PLC0415

    cfg = load_task_config(config, overrides)
    file = cfg.pop("_file")
    mcfg = cfg["model"]
    model = resolve_config(mcfg["name"], mcfg.get("task"), model_overrides=dict(mcfg.get("overrides") or {}))
    header = f"# {file}" + (f" with {' '.join(overrides)}" if overrides else "") + "\n"
    resolved = {"resolved_model": {k: v for k, v in model.items() if not k.startswith("_")}}
    return header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=120) + \
        yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=120)


def _converters() -> dict[str, object]:
    """Family name → its official-checkpoint converter (``official_converter`` of the registered model class), for
    every registered model that has one, plug-ins included. Imports each model module (only when asked)."""
    from zoo.registry import MODELS  # noqa: PLC0415

    found = {}
    for name in MODELS.names():
        converter = getattr(MODELS.get(name), "official_converter", None)
        if converter is not None:
            found[name] = converter
    return found


def _converter_summary(converter) -> str:
    doc = (getattr(converter, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else "-"


def _cmd_convert(args) -> int:
    import difflib  # noqa: PLC0415

    from zoo.registry import MODELS, UnknownNameError  # noqa: PLC0415

    if args.list:
        given = [a for a in (args.family, args.checkpoint, args.out_dir) if a is not None]
        if given or args.model is not None or args.task is not None:
            print("mmzoo convert: error: --list takes no other argument (FAMILY CHECKPOINT OUT_DIR, --model, --task)",
                  file=sys.stderr)
            return 2
        converters = _converters()
        width = max((len(n) for n in converters), default=0)
        for name, converter in converters.items():
            print(f"{name:<{width}}  {_converter_summary(converter)}")
        return 0
    if args.family is None or args.checkpoint is None or args.out_dir is None:
        print("mmzoo convert: error: expected FAMILY CHECKPOINT OUT_DIR (families with a converter: mmzoo convert "
              "--list)", file=sys.stderr)
        return 2
    try:
        converter = getattr(MODELS.get(args.family), "official_converter", None)
    except UnknownNameError:
        converter, known = None, False
    else:
        known = True
    if converter is None:
        families = sorted(_converters())
        close = difflib.get_close_matches(args.family, families, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = "has no official-checkpoint converter" if known else "is not a registered model family"
        print(f"mmzoo convert: error: family {args.family!r} {what}{hint}; families with a converter: "
              f"{', '.join(families) or '(none)'}", file=sys.stderr)
        return 2
    report = converter(args.checkpoint, args.out_dir, model=args.model, task=args.task)
    print(f"converted {args.checkpoint} -> {args.out_dir}")
    print(_table([[k, v if not isinstance(v, list) else (", ".join(v) or "-")] for k, v in report.items()],
                 ["field", "value"]))
    return 0


def _cmd_data(args) -> int:
    if args.name == "shard":
        from zoo.data.shards import shard_task_config  # noqa: PLC0415
        from zoo.spec import ConfigError  # noqa: PLC0415

        if args.shard_size < 1:
            raise ConfigError(f"expected a positive number of samples per shard, got {args.shard_size}",
                              "--shard-size")
        if args.max_bytes is not None and args.max_bytes < 1:
            raise ConfigError(f"expected a positive number of bytes per shard, got {args.max_bytes}", "--max-bytes")
        written = shard_task_config(args.config, args.split, args.out, shard_size=args.shard_size,
                                    max_bytes=args.max_bytes, overrides=args.overrides, prefix=args.prefix)
        print(_table([[str(path), len(m["shards"]), m["total"]] for path, m in written],
                     ["manifest", "shards", "samples"]))
        print(f"read them with data.shards: {{{args.split}: MANIFEST}} in a task config (docs/shards.md)")
        return 0
    if args.name == "convert":
        from zoo.data.video_annotations import convert_msrvtt, convert_youcook  # noqa: PLC0415
        from zoo.spec import ConfigError  # noqa: PLC0415

        if args.dataset == "msrvtt":
            written = convert_msrvtt(args.annotations, args.out, train_csv=args.train_csv, val_csv=args.val_csv,
                                     test_csv=args.test_csv)
        else:
            if args.test_csv is not None:
                raise ConfigError("YouCookII's official splits are train and val: expected --train-csv and / or "
                                  "--val-csv", "--test-csv")
            if args.train_csv is None and args.val_csv is None:
                raise ConfigError("expected --train-csv youcookii_train.csv and / or --val-csv youcookii_val.csv "
                                  "(the pickle holds the videos of both splits)", "--train-csv")
            written = convert_youcook(args.annotations, args.out, train_csv=args.train_csv, val_csv=args.val_csv)
        print(f"{args.dataset} records written to {args.out}")
        print(_table([[name, count] for name, count in written.items()], ["file", "records"]))
        return 0
    from zoo.data.shapes import describe_shapes, generate_shapes  # noqa: PLC0415

    root = generate_shapes(args.root, seed=args.seed, force=args.force)
    info = describe_shapes(root)
    print(f"shapes dataset at {root}")
    print(_table([[name, count] for name, count in sorted(info["files"].items())], ["file", "entries"]))
    return 0


def _cmd_features(args) -> int:
    from zoo.data.features import (  # noqa: PLC0415
        check_extraction,
        extract_features,
        frame_encoder,
        videos_of,
        write_features,
    )
    from zoo.spec import ConfigError  # noqa: PLC0415

    if args.out is None and args.npy_dir is None:
        raise ConfigError("expected --out FILE (the features pickle) and / or --npy-dir DIR", "--out")
    check_extraction(args.fps, args.batch_size)
    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"expected a positive integer, got {args.image_size}", "--image-size")
    videos = videos_of(args.annotations, args.root)  # every record read before the encoder is built
    encoder, preprocess = frame_encoder(args.encoder, args.pretrained, args.image_size)
    features = extract_features(encoder, preprocess, videos, fps=args.fps, batch_size=args.batch_size,
                                device=args.device, backend=args.video_backend,
                                progress=None if not args.quiet else False, grid=args.grid)
    write_features(features, args.out, args.npy_dir)
    widths = sorted({v.shape[1] for v in features.values()})
    rows = sum(v.shape[0] for v in features.values())
    print(f"{len(features):,} videos, {rows:,} vectors of {', '.join(map(str, widths))} values "
          f"({args.fps:g} per second) → " + " and ".join(str(p) for p in (args.out, args.npy_dir) if p is not None))
    return 0


def _cmd_eval(args) -> int:
    from zoo.train.run import evaluate  # noqa: PLC0415

    metrics = evaluate(args.source, args.config, args.overrides, split=args.split, output=args.output,
                       trust_imports=args.trust_imports)
    out = metrics.pop("_output")
    print(_table([[k, f"{v:.2f}"] for k, v in metrics.items()], ["metric", "value"]))
    print(f"results written to {out}")
    return 0


def _cmd_predict(args) -> int:
    import json  # noqa: PLC0415

    from zoo.predict import generate_images, predict  # noqa: PLC0415

    sampling = {"--out": args.out, "--num-images": args.num_images, "--seed": args.seed, "--top-k": args.top_k,
                "--top-p": args.top_p, "--temperature": args.temperature}
    if args.generate_image is not None:  # text → image: no media, none of the image-reading modes
        clash = [flag for flag, on in (("--image", args.image), ("--video", args.video),
                                       ("--question", args.question is not None), ("--caption", args.caption),
                                       ("--texts", args.texts), ("--answers", args.answers),
                                       ("--hypothesis", args.hypothesis is not None),
                                       ("--statement", args.statement is not None), ("--image2", args.image2)) if on]
        if clash:
            print(f"mmzoo predict: error: --generate-image makes images from text and cannot be combined with "
                  f"{', '.join(clash)}", file=sys.stderr)
            return 2
        try:
            paths = generate_images(args.source, args.generate_image, out=args.out or "image.png",
                                    num_images=1 if args.num_images is None else args.num_images,
                                    seed=0 if args.seed is None else args.seed, top_k=args.top_k, top_p=args.top_p,
                                    temperature=args.temperature, trust_imports=args.trust_imports)
        except ValueError as exc:
            print(f"mmzoo predict: error: {_error_line(exc)}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps({"text": args.generate_image, "images": [str(p) for p in paths]}, indent=2))
        else:
            print("\n".join(str(p) for p in paths))
        return 0
    unused = [flag for flag, value in sampling.items() if value is not None]
    if unused:
        print(f"mmzoo predict: error: {', '.join(unused)}: only used with --generate-image TEXT", file=sys.stderr)
        return 2
    media = args.image or args.video
    if not media:
        raise FileNotFoundError("give --image PATH (or --video PATH), or --generate-image TEXT")
    try:
        out = predict(args.source, media, question=args.question, caption=args.caption, texts=args.texts,
                      answers=args.answers, top=args.top, num_frames=args.num_frames, hypothesis=args.hypothesis,
                      statement=args.statement, media2=args.image2, trust_imports=args.trust_imports)
    except ValueError as exc:
        print(f"mmzoo predict: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
    elif "answer" in out:
        print(f"{out['answer']}    (probability {out['prob']:.3f})")
    elif "caption" in out:
        print(out["caption"])
    elif "hypothesis" in out:
        print(f"{out['label']}    (" + ", ".join(f"{k} {v:.3f}" for k, v in out["probs"].items()) + ")")
    elif "statement" in out:
        print(f"{str(out['label']).lower()}    (probability of true {out['prob']:.3f})")
    else:
        print(_table([[f"{i + 1}", f"{score:.3f}", text] for i, (text, score) in enumerate(out["ranking"])],
                     ["rank", "score", "text"]))
    return 0


def _cmd_export(args) -> int:
    from zoo.train.run import export_checkpoint  # noqa: PLC0415

    if args.part is not None:
        if args.trainable_only:
            print("mmzoo export: error: --part writes the whole part; --trainable-only does not apply", file=sys.stderr)
            return 2
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        try:
            out = model_from_checkpoint(args.source, trust_imports=args.trust_imports).export_part(args.part,
                                                                                                  args.out_dir)
        except ValueError as exc:
            print(f"mmzoo export: error: {_error_line(exc)}", file=sys.stderr)
            return 2
        print(f"exported part {args.part!r} of {args.source} -> {out} (set model.{args.part}.pretrained: {out})")
        return 0
    from zoo.deploy import FORMATS, GRAPHS, DeployError  # noqa: PLC0415

    formats = [f for f in (args.format or "").split(",") if f and f != "safetensors"]
    graphs = [g for g in (args.graphs or "").split(",") if g] or list(GRAPHS)
    bad = [f for f in formats if f not in FORMATS] + [g for g in graphs if g not in GRAPHS]
    if bad:
        print(f"mmzoo export: error: unknown {', '.join(bad)}; --format takes {', '.join(('safetensors',) + FORMATS)}"
              f" (comma-separated), --graphs {', '.join(GRAPHS)}", file=sys.stderr)
        return 2
    try:
        out = export_checkpoint(args.source, args.out_dir, trainable_only=args.trainable_only,
                                trust_imports=args.trust_imports, formats=formats, graphs=graphs)
    except DeployError as exc:
        print(f"mmzoo export: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {out} (load with zoo.from_pretrained)")
    if formats:
        from zoo.hub import read_json  # noqa: PLC0415

        manifest = read_json(os.path.join(out, "graphs", "graphs.json"))
        rows = [[name, fmt, f.get("file", "-"), "yes" if f.get("dynamic_batch") else ("no" if "file" in f else "-"),
                 f"{f['max_abs_diff']:.2g}" if "max_abs_diff" in f else f.get("error", "")]
                for name, entry in manifest["graphs"].items() for fmt, f in entry["files"].items()]
        print(_table(rows, ["graph", "format", "file", "dynamic batch", "max |diff| to eager (or why not)"]))
    return 0


def _cmd_serve(args) -> int:
    from zoo.serve import serve  # noqa: PLC0415

    source = args.source
    if os.path.exists(source):  # an export, run folder or checkpoint: loaded as every command loads it
        from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

        source = model_from_checkpoint(source, trust_imports=args.trust_imports)
    try:
        serve(source, task=args.task, host=args.host, port=args.port, share=args.share)
    except (ImportError, ValueError) as exc:  # no gradio (the demo extra), or a page the model cannot serve
        print(f"mmzoo serve: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _cmd_chat(args) -> int:
    """Multi-turn chat with a model that has ``chat`` (an instruction-tuned language model): one question per stdin line, one answer line per question; the whole
    conversation stays in the prompt (official chat template)."""
    import torch  # noqa: PLC0415

    from zoo.predict import _pixels  # noqa: PLC0415
    from zoo.train.run import model_from_checkpoint  # noqa: PLC0415

    if os.path.exists(args.source):
        model = model_from_checkpoint(args.source, trust_imports=args.trust_imports)
    else:
        import zoo  # noqa: PLC0415

        torch.manual_seed(args.seed)
        model = zoo.create_model(args.source)  # a registered name (random weights unless its config names weights)
    if not hasattr(model, "chat"):
        from zoo.spec import ConfigError  # noqa: PLC0415

        raise ConfigError(f"{args.source}: {type(model).__name__} has no chat(); chat needs an instruction-tuned "
                          "model with a chat template")
    model.eval()
    image = _pixels(model, args.image, 1)[0] if args.image else None
    history: list[tuple[str, str]] = []
    for line in sys.stdin:
        question = line.strip()
        if not question:
            continue
        with torch.inference_mode():
            answer = model.chat(image, history, question, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
        history.append((question, answer))
        print(f"{args.prefix}{answer}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmzoo", description="A modular multimodal model zoo.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also MMZOO_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument("--trust-imports", action="store_true",
                       help="import the modules an export's or checkpoint's config lists under 'imports' (runs their "
                            "code: only for files from a source you trust; off by default)")

    s = sub.add_parser("list", help="list registered models (or parts with --parts, task configs with --tasks)")
    s.add_argument("pattern", nargs="?", default=None, help="glob pattern, e.g. '*-tiny'")
    s.add_argument("--params", action="store_true", help="also count parameters (builds each model on meta)")
    s.add_argument("--parts", action="store_true", help="list registered parts per registry instead")
    s.add_argument("--tasks", action="store_true",
                   help="list the task configs instead (names that mmzoo train and mmzoo eval accept)")
    s.add_argument("--pretrained", action="store_true",
                   help="list the official checkpoints of the models (tag, task, resolution, scores, cached or not)")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("pull", help="download, verify and convert a model's official checkpoint into $MMZOO_HOME")
    s.add_argument("name", help="registered model name (mmzoo list --pretrained)")
    s.add_argument("--tag", default="official", help="checkpoint tag (default: 'official', the default for --task)")
    s.add_argument("--task", default=None, help="task variant the checkpoint is for (with --tag official)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(fn=_cmd_pull)

    s = sub.add_parser("info", help="parameter count, parts, tasks and resolution of a model")
    s.add_argument("name")
    s.add_argument("--task", default=None)
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("demo", help="build a small model and run it on an image and a question")
    s.add_argument("--model", default="demo-tiny")
    s.add_argument("--question", default="what colour is the circle?")
    s.add_argument("--image", default=None, help="an image file (default: a drawn scene)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. model.vision.depth=1")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("train", help="fine-tune, evaluate and export as a task config says")
    s.add_argument("config", help="a task config: a YAML file, or the name of a packaged one (e.g. vqa-shapes; "
                                  "mmzoo list --tasks)")
    # default=[]: argparse counts a "*" positional without a default among the required ones
    s.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. trainer.max_epochs=1 (a value replaces what it names; ~KEY removes it)")
    s.add_argument("--resume", action="store_true", help="continue the run from its newest readable checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run the folder holds (train.output_dir/train.name); without it, or --resume, a "
                        "folder that holds a run is an error")
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("config", help="print a task config as a run would use it: overrides applied, values checked, "
                                      "and the model config it builds")
    s.add_argument("config", help="a task config: a YAML file or the name of a packaged one")
    s.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, as mmzoo train takes them")
    s.set_defaults(fn=_cmd_config)

    s = sub.add_parser("data", help="shapes: generate the embedded dataset (done automatically on first use); "
                                    "convert: official video annotations (MSRVTT, YouCookII) to records; "
                                    "shard: a split as WebDataset tar shards")
    data_sub = s.add_subparsers(dest="name", required=True)
    d = data_sub.add_parser("shapes", help="generate the embedded 'shapes' dataset")
    d.add_argument("--root", default=None, help="folder (default: $MMZOO_HOME/datasets/shapes-v3)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="regenerate even if present")
    d.set_defaults(fn=_cmd_data)
    d = data_sub.add_parser("convert", help="the MSRVTT / YouCookII benchmark annotations → {prefix}_{split}.json records "
                                            "(read with data.video_features)")
    d.add_argument("dataset", choices=["msrvtt", "youcook"])
    d.add_argument("annotations", help="msrvtt: MSRVTT_data.json; youcook: youcookii_data.pickle (read without running "
                                       "code)")
    d.add_argument("--train-csv", default=None,
                   help="msrvtt: MSRVTT_train.9k.csv (retrieval); youcook: youcookii_train.csv")
    d.add_argument("--val-csv", default=None, help="youcook: youcookii_val.csv; msrvtt: a csv of video ids")
    d.add_argument("--test-csv", default=None, help="msrvtt: MSRVTT_JSFUSION_test.csv (retrieval)")
    d.add_argument("--out", required=True, help="folder for the JSON files (msrvtt without a csv: the official "
                                                "captioning split 6513 / 497 / 2990)")
    d.set_defaults(fn=_cmd_data)
    d = data_sub.add_parser("shard", help="write a split of a task config's data as WebDataset tar shards and a "
                                          "manifest (read with data.shards)")
    d.add_argument("config", help="a task config: a YAML file or the name of a packaged one")
    d.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, as mmzoo train takes them")
    d.add_argument("--split", default="train", choices=["train", "val", "test"], help="the split to write")
    d.add_argument("--out", default=None, help="folder for the shards and the manifest (default: {data.root}/shards)")
    d.add_argument("--shard-size", type=int, default=1000, help="samples per shard at most (default 1000)")
    d.add_argument("--max-bytes", type=int, default=None,
                   help="bytes per shard at most (a larger sample gets a shard of its own)")
    d.add_argument("--prefix", default=None, help="the shard file names' prefix (default: the split)")
    d.set_defaults(fn=_cmd_data)

    s = sub.add_parser("features", help="pre-extracted video features (one vector per second, as the benchmark feature "
                                        "pickles): a frozen image encoder over "
                                        "one frame per second → {video_id: (T, D)} pickle")
    s.add_argument("encoder", help="timm:NAME or open_clip:NAME (a vision encoder), or a registered model name or "
                                   "model file, or an export folder (its vision part and preprocessing)")
    s.add_argument("annotations", nargs="+", help="annotation files whose video records are read")
    s.add_argument("--root", default=None, help="the folder the records' video paths are relative to (data.root)")
    s.add_argument("--out", default=None, help="the features pickle {video_id: float32 (T, D)} (official layout)")
    s.add_argument("--npy-dir", default=None, help="also (or instead) a folder of <video_id>.npy")
    s.add_argument("--grid", type=int, default=None, metavar="G",
                   help="a G x G grid of mean patch tokens per frame instead of the pooled vector (G*G*D values: "
                        "where things are stays in the features)")
    s.add_argument("--fps", type=float, default=1.0, help="feature vectors per second of video (official: 1)")
    s.add_argument("--batch-size", type=int, default=64, help="frames per forward pass")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--pretrained", default=None, help="the encoder's weights (a local file; for a model: its weights "
                                                      "file or export folder)")
    s.add_argument("--image-size", type=int, default=None, help="input resolution (default: the encoder's)")
    s.add_argument("--video-backend", default="decord", choices=["decord", "av"])
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_features)

    s = sub.add_parser("eval", parents=[trust],
                       help="evaluate an export, run folder or checkpoint on a task config's data")
    s.add_argument("source", help="export folder, run folder or .ckpt file")
    s.add_argument("config", help="task config naming the data: a YAML file or a task config name")
    s.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE")
    s.add_argument("--split", default="test", choices=["val", "test"])
    s.add_argument("--output", default=None, help="JSON file for the results (default: beside the source)")
    s.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("predict", parents=[trust],
                       help="answer a question, caption an image, rank texts, judge a hypothesis "
                                         "or a statement, or generate images from text")
    s.add_argument("source", help="export folder, run folder or .ckpt file")
    s.add_argument("--image", default=None, help="an image file")
    s.add_argument("--video", default=None, help="a video file (frames through the model's video path)")
    s.add_argument("--question", default=None, help="VQA: the question")
    s.add_argument("--caption", action="store_true", help="captioning: describe the image")
    s.add_argument("--texts", default=None, help="retrieval: a text file (one candidate per line) or a JSON list")
    s.add_argument("--answers", default=None,
                   help="VQA answer list to rank (default: the one the model was fine-tuned with)")
    s.add_argument("--hypothesis", default=None,
                   help="visual entailment: is TEXT entailed by, neutral to or contradicted by the image")
    s.add_argument("--statement", default=None, help="NLVR: is TEXT true of the two images (--image, --image2)")
    s.add_argument("--image2", default=None, help="NLVR: the right image")
    s.add_argument("--top", type=int, default=5, help="retrieval: how many ranked texts to show")
    s.add_argument("--num-frames", type=int, default=3, help="video: frames sampled")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    g = s.add_argument_group("text to image (a model with an image tokenizer, built or fine-tuned with task "
                             "text_to_image)")
    g.add_argument("--generate-image", default=None, metavar="TEXT",
                   help="sample images for TEXT and write them as PNG (no --image needed)")
    g.add_argument("--out", default=None, help="PNG file (default image.png; with --num-images N: <stem>_0.png ...)")
    g.add_argument("--num-images", type=int, default=None, help="how many images to sample (default 1)")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampling generator (default 0)")
    g.add_argument("--top-k", type=int, default=None,
                   help="keep the K most likely codes (default: model config; 1 = greedy)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: model config)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: model config)")
    s.set_defaults(fn=_cmd_predict)

    s = sub.add_parser("export", parents=[trust],
                       help="turn a run folder or training checkpoint into a loadable export")
    s.add_argument("source", help="run folder or .ckpt file")
    s.add_argument("out_dir")
    s.add_argument("--trainable-only", action="store_true", help="write only the trainable tensors (adapters)")
    s.add_argument("--part", default=None, metavar="NAME",
                   help="write only this part (lm, vision) in the format its `pretrained` option loads: a "
                        "transformers folder for a language model, a timm checkpoint for a timm encoder")
    s.add_argument("--format", default=None, metavar="F[,F...]",
                   help="also write deployable graphs into OUT_DIR/graphs/, each checked against the eager model: "
                        "onnx (run with onnxruntime), torchscript, exported (torch.export .pt2)")
    s.add_argument("--graphs", default=None, metavar="G[,G...]",
                   help="which graphs with --format: vision, text, model (the whole forward pass); default all")
    s.set_defaults(fn=_cmd_export)

    s = sub.add_parser("convert", help="convert an official checkpoint into a loadable export (--list: the families)")
    s.add_argument("family", nargs="?", default=None,
                   help="the model family whose official checkpoint it is (mmzoo convert --list)")
    s.add_argument("checkpoint", nargs="?", default=None, help="the official .pth file")
    s.add_argument("out_dir", nargs="?", default=None, help="folder for the export (config.json + model.safetensors)")
    s.add_argument("--list", action="store_true", help="list the families that have a converter, and exit")
    s.add_argument("--model", default=None, help="registered model name (default: detected from the checkpoint)")
    s.add_argument("--task", default=None, help="task variant (default: detected from the checkpoint)")
    s.set_defaults(fn=_cmd_convert)

    s = sub.add_parser("serve", parents=[trust],
                       help="a web demo (gradio) of an export: VQA, captioning, retrieval, VE, NLVR or chat, by its "
                            "task")
    s.add_argument("source", help="export folder, run folder, checkpoint or registered model name")
    s.add_argument("--task", default=None, help="the page to show (default: the model's task)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--share", action="store_true", help="also ask gradio for a public link")
    s.set_defaults(fn=_cmd_serve)

    s = sub.add_parser("chat", parents=[trust],
                       help="multi-turn chat with an instruction-tuned model (one with chat()): one question per "
                            "stdin line")
    s.add_argument("source", help="export folder, run folder, .ckpt file or registered model name")
    s.add_argument("--image", default=None, help="an image file the conversation is about (none: language only)")
    s.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default: the model's)")
    s.add_argument("--num-beams", type=int, default=1)
    s.add_argument("--prefix", default="", help="text printed before each answer (e.g. 'assistant: ')")
    s.add_argument("--seed", type=int, default=0, help="seed for a registered model built with random weights")
    s.set_defaults(fn=_cmd_chat)

    s = sub.add_parser("bench", help="benchmarks: attention | model NAME | train NAME | video [TASK_CONFIG]")
    s.add_argument("what", choices=["attention", "model", "train", "video"])
    s.add_argument("name", nargs="?", default=None,
                   help="model name (bench model); task config whose training step is timed (bench video)")
    s.add_argument("--frames", type=int, default=8, help="frames sampled per clip (bench video)")
    s.add_argument("--no-step", action="store_true", help="bench video: decoding only, no training step")
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--tokens", type=int, default=40)
    s.add_argument("--forward-only", action="store_true")
    s.add_argument("--lengths", default="197,577,1025")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--heads", type=int, default=12)
    s.add_argument("--head-dim", type=int, default=64)
    s.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 10; 3 for models)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--backward", action="store_true")
    s.add_argument("--task", default="retrieval", help="bench train: the task whose objective a step runs")
    s.add_argument("--grad-checkpointing", action="store_true", help="bench train: recompute the encoders' layers")
    s.add_argument("--compile", action="store_true",
                   help="bench train: torch.compile the vision, text and fusion parts (compiled in the warm-up step)")
    s.add_argument("--memory", action="store_true",
                   help="bench train: batch 8 and 32, with and without gradient checkpointing, fp32 and bf16, each in "
                        "its own process (peak resident memory), and the batch that fits 24 GiB")
    s.add_argument("--official", default=None, metavar="CHECKOUT",
                   help="bench train: also time the official code's step from this checkout of it (the model "
                        "family's; interleaved, after checking equal outputs on its initial weights)")
    s.add_argument("--official-python", default=None, metavar="PY",
                   help="the Python of a venv that imports the official code (its transformers / timm)")
    s.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(fn=_cmd_bench)
    return p


def _error_line(exc: BaseException) -> str:
    """One line for an expected failure: an OSError as ``PATH: reason`` (the errno text), others as their message
    (whose first line names the file and key)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, OSError) else " ".join(text.split("\n"))


def _expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the user can act on (reported in one line) rather than a bug (a traceback).
    DataError is looked up only when its module was imported (it imports torch, which ``mmzoo list`` does not need)."""
    from zoo.registry import UnknownNameError  # noqa: PLC0415
    from zoo.spec import ConfigError  # noqa: PLC0415

    if isinstance(exc, (ConfigError, UnknownNameError, OSError, FloatingPointError)):  # WeightsError is a ConfigError
        return True
    datasets = sys.modules.get("zoo.data.datasets")
    return datasets is not None and isinstance(exc, datasets.DataError)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as exc:  # noqa: BLE001 - re-raised unless expected
        if not _expected(exc) or args.debug or os.environ.get("MMZOO_DEBUG"):
            raise
        print(f"mmzoo {args.command}: error: {_error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
