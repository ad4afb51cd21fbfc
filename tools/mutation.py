"""Mutation testing of the core modules with mutmut, on demand (never in CI).

    tools/mutation.sh run GROUP [GROUP ...] [--jobs N] [--sample N]   # mutate, test, then report
    tools/mutation.sh recheck GROUP [GROUP ...]          # rerun the mutants not killed or not run yet
    tools/mutation.sh report [GROUP ...] [--docs]        # score and survivors from the last runs

Each group runs in its own scratch copy of the working tree, ``build/mutation/GROUP`` (ignored by git), so results are
kept between runs and a rerun tests only the functions whose code or tests changed. mutmut's per-test coverage picks,
for each mutant, the tests of the group's pool that execute the mutated function; a mutant is killed when one fails.

A full run of a group takes hours on 2 cores (each surviving mutant runs every test that reaches its function), so
``--sample N`` tests a seeded random sample of N mutants of the group (the same sample on every run) and the report
gives the score over that sample with its 95% (Wilson) interval; ``--sample 0`` (the default) tests them all.

The report reads mutmut's result files. A surviving mutant either gets a test that kills it, or a verdict in
``tools/mutation_verdicts.json`` (``{name: {"change": the diff line as the report prints it, "why": ...}}``; a
verdict whose change no longer matches is ignored) saying why it is equivalent (no observable behaviour changes, e.g.
``dim=+1`` for ``dim=-1`` of a 2-D tensor); a verdict that starts with "survives:" explains a live mutant (a device
bug no CPU test can see) and the mutant still counts against the score. The score is killed / (all mutants tested −
equivalent ones); mutants that no test in the pool executes count as survivors. ``--docs`` writes the table into
docs/testing.md between its markers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
VERDICTS = ROOT / "tools" / "mutation_verdicts.json"
DOC = ROOT / "docs" / "testing.md"
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"

# group -> files mutated, the test pool, and (optionally) the mutant names kept (fnmatch patterns)
GROUPS: dict[str, dict] = {
    "heads": {
        "mutate": ["zoo/heads/*.py"],
        "tests": ["tests/test_heads_reference.py", "tests/test_vqa_head.py", "tests/test_caption.py",
                  "tests/test_box_nlvr.py", "tests/test_x2vlm.py", "tests/test_cclm.py", "tests/test_davinci.py"],
        # code that runs only in processes a test spawns (mutmut's coverage does not follow them): each such mutant
        # is run against the named test with the mutant switched on in the environment the children inherit
        "spawned": {"zoo.heads.contrastive.xǁ_GatherWithGradǁ*": "tests/test_distributed.py"},
    },
    "masking": {"mutate": ["zoo/data/masking.py"], "tests": ["tests/test_masking.py"]},
    "attention": {
        "mutate": ["zoo/modules/attention.py"],
        "tests": ["tests/test_attention.py", "tests/test_fusion.py", "tests/test_text.py", "tests/test_vision.py"],
    },
    "layers": {
        "mutate": ["zoo/modules/layers.py"],
        "tests": ["tests/test_fusion.py", "tests/test_attention.py", "tests/test_text.py", "tests/test_x2vlm.py"],
    },
    "metrics": {
        "mutate": ["zoo/metrics/*.py"],
        "tests": ["tests/test_metrics.py", "tests/test_retrieval_metrics.py", "tests/test_ve_nlvr.py"],
    },
    "converters": {
        "mutate": ["zoo/models/*/convert.py", "zoo/models/davinci/vqgan.py", "zoo/modules/vision/swin.py"],
        "tests": ["tests/test_x2vlm.py", "tests/test_cclm.py", "tests/test_davinci.py", "tests/test_epalm.py",
                  "tests/test_mmgpt.py", "tests/test_vision.py"],
        "names": ["*convert*"],
    },
    "hub": {
        "mutate": ["zoo/hub.py"],
        "tests": ["tests/test_hub.py", "tests/test_hostile_loading.py", "tests/test_atomic_files.py",
                  "tests/test_factory.py", "tests/test_disk_faults.py", "tests/test_vqa_head.py"],
    },
    "train": {
        "mutate": ["zoo/train/*.py"],
        "tests": ["tests/test_train_optim.py", "tests/test_config_faults.py", "tests/test_resume_faults.py",
                  "tests/test_train_e2e.py", "tests/test_data.py", "tests/test_data_faults.py"],
    },
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "crashed",
          -9: "crashed", None: "not checked"}


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def _sync(dest: Path) -> None:
    """Make ``dest`` a copy of the working tree (tracked and untracked, not ignored files); mutmut's ``mutants/``
    folder inside it is kept, so earlier results stay valid for unchanged functions."""
    files = set(_tracked_files())
    dest.mkdir(parents=True, exist_ok=True)
    for path in dest.rglob("*"):
        rel = path.relative_to(dest).as_posix()
        if rel.split("/")[0] in ("mutants", "setup.cfg", "sitecustomize.py", "run.json", "sample.json", "spawned.json",
                                 "diffs.json") \
                or not path.is_file():
            continue
        if rel not in files:
            path.unlink()
    for rel in files:
        src, dst = ROOT / rel, dest / rel
        if dst.exists():
            a, b = src.stat(), dst.stat()
            if (a.st_mtime_ns, a.st_size) == (b.st_mtime_ns, b.st_size):
                continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _setup_cfg(group: str) -> str:
    spec = GROUPS[group]
    lines = ["[mutmut]", "source_paths=zoo", "only_mutate=" + "\n\t".join(spec["mutate"]),
             "pytest_add_cli_args_test_selection=" + "\n\t".join(spec["tests"]),
             # sitecustomize.py: processes started by the tests read the configuration from the mutated copy too
             # (zoo/configs comes with the source folder)
             "also_copy=tools\n\tdocs\n\tREADME.md\n\trun\n\tsitecustomize.py",
             # torch in a forked child of a process that ran tests can deadlock; a fork server starts clean
             "process_isolation=forkserver",
             # mutmut's configuration read before any test changes directory (tools/mutmut_preload.py)
             "pytest_add_cli_args=-p\n\tmutmut_preload"]
    return "\n".join(lines) + "\n"


def _generate(dest: Path, env: dict[str, str]) -> None:
    """Let mutmut write the mutated copy (``mutants/``) without testing anything, so the mutant names are known."""
    code = ("from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, create_mutants\n"
            "from mutmut.mutation.trampoline import set_mutant_under_test\n"
            "import os\nos.makedirs('mutants', exist_ok=True)\nset_mutant_under_test('mutant_generation')\n"
            "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)\n")
    subprocess.run([sys.executable, "-c", code], cwd=dest, env=env, check=True)


def _sample(group: str, size: int) -> list[str] | None:
    """The group's seeded sample of mutant names (kept in ``sample.json`` so every run tests the same one)."""
    path = WORK / group / "sample.json"
    names = sorted(_results(group, spawned=False))
    if size <= 0 or size >= len(names):
        path.unlink(missing_ok=True)
        return None
    chosen = sorted(random.Random(f"{group}:{size}").sample(names, size))
    path.write_text(json.dumps(chosen, indent=0), encoding="utf-8")
    return chosen


def run(groups: list[str], jobs: int, recheck: bool = False, sample: int = 0) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tools"), os.environ.get("PYTHONPATH")])))
    mutmut = Path(sys.executable).parent / "mutmut"
    for group in groups:
        dest = WORK / group
        _sync(dest)
        (dest / "diffs.json").unlink(missing_ok=True)
        _DIFFS.pop(group, None)
        (dest / "setup.cfg").write_text(_setup_cfg(group), encoding="utf-8")
        shutil.copy2(ROOT / "tools" / "mutmut_sitecustomize.py", dest / "sitecustomize.py")
        start = time.time()
        names = GROUPS[group].get("names", [])
        if sample and not recheck:
            _generate(dest, env)
            chosen = _sample(group, sample)
            if chosen is not None:  # only those not tested yet (mutmut retests every mutant it is given by name)
                results = _results(group, spawned=False)
                names = [n for n in chosen if results[n] == "not checked"]
        if recheck:  # mutmut reruns the mutants it is given by name, with the tests as they are now
            results = _results(group, spawned=False, sampled=True)
            names = sorted(n for n, s in results.items() if s in ("survived", "no tests", "not checked"))
        if (sample or recheck) and not names:
            print(f"[{group}] nothing left to test", flush=True)
            continue
        cmd = [str(mutmut), "run", "--max-children", str(jobs), *names]
        print(f"[{group}] mutmut run of {len(names) or 'all'} mutants in {dest.relative_to(ROOT)}", flush=True)
        rc = subprocess.run(cmd, cwd=dest, env=env, check=False).returncode
        _run_spawned(group, env)
        info = json.loads((dest / "run.json").read_text(encoding="utf-8")) if (dest / "run.json").exists() else {}
        key = "recheck_seconds" if recheck else "seconds"
        info[key] = info.get(key, 0) + round(time.time() - start)  # over all runs of this group
        info.update(rc=rc, finished=time.strftime("%Y-%m-%d %H:%M"))
        (dest / "run.json").write_text(json.dumps(info), encoding="utf-8")
        if rc:
            print(f"[{group}] mutmut exited with {rc}", file=sys.stderr)
    report(groups, docs=False)


def _run_spawned(group: str, env: dict[str, str]) -> None:
    """Run the mutants of code executed only in spawned processes against the test that spawns them."""
    spawned = GROUPS[group].get("spawned", {})
    if not spawned:
        return
    path = WORK / group / "spawned.json"
    done = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for name in _results(group, spawned=False, sampled=True):
        test = next((t for pat, t in spawned.items() if fnmatch.fnmatch(name, pat)), None)
        if test is None or name in done:
            continue
        rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
                            cwd=WORK / group / "mutants", env=dict(env, MUTANT_UNDER_TEST=name),
                            capture_output=True, timeout=600, check=False).returncode
        done[name] = 1 if rc else 0
        print(f"[{group}] {name}: {'killed' if rc else 'survived'} by {test}", flush=True)
        path.write_text(json.dumps(done, indent=1), encoding="utf-8")


def _results(group: str, spawned: bool = True, sampled: bool = False) -> dict[str, str]:
    """mutant name -> status, from mutmut's ``.meta`` files of the group's scratch copy (only the sample's mutants
    with ``sampled``: :func:`_in_sample`)."""
    names = GROUPS[group].get("names")
    out: dict[str, str] = {}
    for meta in sorted((WORK / group / "mutants").rglob("*.py.meta")):
        rel = meta.relative_to(WORK / group / "mutants").as_posix()[: -len(".meta")]
        if not any(fnmatch.fnmatch(rel, pat) for pat in GROUPS[group]["mutate"]):
            continue
        for name, code in json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"].items():
            if names and not any(fnmatch.fnmatch(name, pat) for pat in names):
                continue
            out[name] = STATUS.get(code, f"exit {code}")
    path = WORK / group / "spawned.json"
    if spawned and path.exists():
        for name, code in json.loads(path.read_text(encoding="utf-8")).items():
            out[name] = STATUS[code]
    return _in_sample(group, out) if sampled else out


def _in_sample(group: str, results: dict[str, str]) -> dict[str, str]:
    """The entries of ``results`` in the group's sample (all of them when the group was not run on a sample)."""
    path = WORK / group / "sample.json"
    if not path.exists():
        return results
    keep = set(json.loads(path.read_text(encoding="utf-8")))
    return {k: v for k, v in results.items() if k in keep}


_DIFFS: dict[str, dict[str, str]] = {}  # group -> its diffs.json, read once


def _diff(group: str, name: str) -> str:
    """The mutant's change, its removed and added lines joined by " / " (cached until the group runs again)."""
    cache_path = WORK / group / "diffs.json"
    if group not in _DIFFS:
        _DIFFS[group] = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.exists() else {}
    cache = _DIFFS[group]
    if name not in cache:
        mutmut = Path(sys.executable).parent / "mutmut"
        shown = subprocess.run([str(mutmut), "show", name], cwd=WORK / group, capture_output=True, text=True,
                               check=False).stdout
        lines = [ln for ln in shown.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        cache[name] = " / ".join(ln.strip() for ln in lines)
        cache_path.write_text(json.dumps(cache, indent=0, ensure_ascii=False), encoding="utf-8")
    return cache[name]


def report(groups: list[str], docs: bool) -> None:
    verdicts = json.loads(VERDICTS.read_text(encoding="utf-8")) if VERDICTS.exists() else {}
    rows, survivors = [], []
    total_killed = total_scored = 0
    for group in groups or list(GROUPS):
        everything = _results(group)
        results, every = _in_sample(group, everything), len(everything)
        if not results or all(status == "not checked" for status in results.values()):
            rows.append(f"| {group} | not run | | | | | |")
            continue
        counts: dict[str, int] = {}
        for status in results.values():
            counts[status] = counts.get(status, 0) + 1
        open_ = [n for n, s in results.items() if s not in ("killed", "timeout", "not checked")]
        # a verdict holds for the change it was written for: mutant numbers move when the code changes
        judged = {n: verdicts[n]["why"] for n in open_ if n in verdicts and verdicts[n]["change"] == _diff(group, n)}
        # a verdict starting "survives:" explains a live mutant (e.g. a device bug no CPU test can see); it still
        # counts against the score
        equivalent = [n for n in open_ if n in judged and not judged[n].startswith("survives:")]
        alive = [n for n in open_ if n not in equivalent]
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        scored = len(results) - counts.get("not checked", 0) - len(equivalent)
        total_killed, total_scored = total_killed + killed, total_scored + scored
        info = json.loads((WORK / group / "run.json").read_text()) if (WORK / group / "run.json").exists() else {}
        score = "-"
        if scored:
            p = killed / scored
            score = f"{100 * p:.1f}%"
            if len(results) < every:  # Wilson's 95% interval of the whole group's score from the sample
                z2 = 1.96**2
                centre = (p + z2 / (2 * scored)) / (1 + z2 / scored)
                half = 1.96 * math.sqrt(p * (1 - p) / scored + z2 / (4 * scored**2)) / (1 + z2 / scored)
                score += f" ({100 * (centre - half):.1f}–{100 * min(1.0, centre + half):.1f})"
        tested = f"{len(results)} of {every}" if len(results) < every else f"{every}"
        rows.append(f"| {group} | {tested} | {killed} | {len(equivalent)} | {len(alive)} "
                    f"| {counts.get('not checked', 0)} | {score} | {info.get('seconds', '?')} s |")
        for name in sorted(open_):
            survivors.append((group, name, results[name], judged.get(name, "**no verdict: needs a test**")))
    head = ("| group | mutants (sampled of all) | killed | equivalent | surviving | not run | score | run time |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    total = f"{100 * total_killed / total_scored:.1f}%" if total_scored else "-"
    table = head + "\n" + "\n".join(rows) + f"\n\nScore over the groups run: **{total}** ({total_killed} of "\
        f"{total_scored} non-equivalent mutants killed; timeouts count as killed)."
    surv = ["| group | mutant | status | change | verdict |", "|---|---|---|---|---|"]
    for group, name, status, verdict in survivors:
        change = _diff(group, name).replace("|", "\\|")
        surv.append(f"| {group} | `{name.split('.', 1)[1]}` | {status} | `{change}` | {verdict} |")
    text = table + "\n\nMutants not killed, each with its verdict:\n\n" + "\n".join(surv) + "\n"
    print(text)
    if docs:
        doc = DOC.read_text(encoding="utf-8")
        a, b = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        DOC.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("groups", nargs="+", choices=list(GROUPS))
    p_run.add_argument("--jobs", type=int, default=1)
    p_run.add_argument("--sample", type=int, default=0, help="test a seeded random sample of N mutants per group")
    p_re = sub.add_parser("recheck")
    p_re.add_argument("groups", nargs="+", choices=list(GROUPS))
    p_re.add_argument("--jobs", type=int, default=1)
    p_rep = sub.add_parser("report")
    p_rep.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    p_rep.add_argument("--docs", action="store_true")
    args = parser.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; expected any of: {', '.join(GROUPS)}")
    if args.cmd in ("run", "recheck"):
        run(args.groups, args.jobs, recheck=args.cmd == "recheck", sample=getattr(args, "sample", 0))
    else:
        report(args.groups, args.docs)


if __name__ == "__main__":
    main()
