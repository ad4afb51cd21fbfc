"""Start-up times: how long the commands and calls a user starts with take, each in a fresh Python process.

    python tools/startup_times.py [--repeat 5] [--markdown]

Rows (median and min of ``--repeat`` fresh processes, wall time of the whole process, so interpreter start-up
included):

- ``python -c pass``: the interpreter alone;
- ``import torch``, ``import transformers``: the libraries' own import time;
- ``import zoo``: the package (lazy: nothing heavy until used);
- ``mmzoo --help``, ``mmzoo list``, ``mmzoo info x2vlm-base`` (builds on the meta device);
- ``create_model("x2vlm-tiny")``, ``create_model("x2vlm-base")``: cold (first call in the process, imports included)
  and, in the same process, warm (a second call: the build alone, random initialisation of every weight).

The split "the libraries vs ours": ``import zoo`` minus ``python -c pass``; ``create_model`` cold minus warm is the
import of torch, timm and transformers and the registry.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import transformers": "import transformers",
    "import zoo": "import zoo",
    "mmzoo --help": "import sys; from zoo.cli import main; sys.argv=['mmzoo','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "mmzoo list": "from zoo.cli import main; main(['list'])",
    "mmzoo info x2vlm-base": "from zoo.cli import main; main(['info', 'x2vlm-base'])",
}
BUILD = ("import time, json, zoo\nt = time.perf_counter(); zoo.create_model({name!r}); cold = time.perf_counter() - t\n"
         "t = time.perf_counter(); zoo.create_model({name!r}); warm = time.perf_counter() - t\n"
         "print(json.dumps([cold, warm]))")


def _process(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def _build(name: str) -> tuple[float, float]:
    import json  # noqa: PLC0415

    out = subprocess.run([sys.executable, "-c", BUILD.format(name=name)], check=True, capture_output=True, text=True)
    cold, warm = json.loads(out.stdout.strip().splitlines()[-1])
    return cold, warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for label, code in CASES.items():
        times = [_process(code) for _ in range(args.repeat)]
        rows.append((label, statistics.median(times), min(times)))
    for name in ("x2vlm-tiny", "x2vlm-base"):
        runs = [_build(name) for _ in range(args.repeat)]
        rows.append((f'create_model("{name}") cold, in-process', statistics.median(r[0] for r in runs),
                     min(r[0] for r in runs)))
        rows.append((f'create_model("{name}") warm, in-process', statistics.median(r[1] for r in runs),
                     min(r[1] for r in runs)))
    print(f"| what (fresh process each, {args.repeat} runs) | median s | min s |")
    print("|---|---:|---:|")
    for label, med, low in rows:
        print(f"| {label} | {med:.2f} | {low:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
