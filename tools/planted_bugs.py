"""Plant each of a list of realistic one-line bugs, one at a time, in a scratch copy of the working tree and check
that the named test fails on it (and passes without it). On demand, not in CI:

    ./run python tools/planted_bugs.py            # all
    ./run python tools/planted_bugs.py itc_temp   # by name
    ./run python tools/planted_bugs.py --docs     # all, and the table into docs/testing.md

The list holds the bugs that once went through the suite (temperature, ITM class, soft targets, masking range,
non-atomic checkpoints, DaVinci's code offset and label smoothing) and the weak spots found beside them (ITC
transpose, embedding normalisation, class orders). Prints one line per bug and exits 1 if any bug went unnoticed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation import DOC, ROOT, _sync

WORK = ROOT / "build" / "planted"

# name -> (file, the line as it is, the line with the bug, the test that must fail)
BUGS: dict[str, tuple[str, str, str, str]] = {
    "itc_temp": ("zoo/heads/contrastive.py", "temp: float = 0.07,", "temp: float = 0.1,",
                 "tests/test_heads_reference.py::test_itc_default_temperature_and_clamp_are_official"),
    "itm_class": ("zoo/heads/matching.py", "return torch.softmax(self.mlp(fused_cls), -1)[:, 1]",
                  "return torch.softmax(self.mlp(fused_cls), -1)[:, 0]",
                  "tests/test_heads_reference.py::test_itm_predict_is_the_softmax_match_probability_float64"),
    "itc_soft_targets": ("zoo/heads/contrastive.py", "targets = pos / pos.sum(1, keepdim=True)", "targets = pos",
                         "tests/test_heads_reference.py::test_itc_loss_soft_targets_for_repeated_images_float64"),
    "itc_transpose": ("zoo/heads/contrastive.py", "sim_t2i = sim_i2t.t()", "sim_t2i = sim_i2t",
                      "tests/test_heads_reference.py::test_itc_loss_both_directions_float64"),
    "itc_image_norm": ("zoo/heads/contrastive.py", "return F.normalize(self.vision_proj(pooled), dim=-1)",
                       "return self.vision_proj(pooled)",
                       "tests/test_heads_reference.py::test_itc_head_normalises_both_embeddings_float64"),
    "mask_never_id_0": ("zoo/data/masking.py", "rng.randint(0, self.vocab_size - 1)",
                        "rng.randint(1, self.vocab_size - 1)",
                        "tests/test_masking.py::test_random_replacements_cover_the_whole_vocabulary"),
    "checkpoint_not_atomic": ("zoo/train/run.py", "torch.save(checkpoint, tmp)", "torch.save(checkpoint, path)",
                              "tests/test_disk_faults.py::test_a_checkpoint_onto_a_full_disk_is_an_os_error_naming_it"),
    "davinci_code_offset": ("zoo/models/davinci/model.py", "return codes + self.text_vocab_size", "return codes",
                            "tests/test_davinci.py::test_code_token_ids_both_ways"),
    "davinci_caption_smoothing": ("zoo/models/davinci/model.py", "caption_label_smoothing: float = 0.1,",
                                  "caption_label_smoothing: float = 0.0,",
                                  "tests/test_davinci.py::test_caption_label_smoothing_default_is_official"),
    "xvnli_class_order": ("zoo/models/cclm/model.py", 'XVNLI_LABELS = ("contradiction", "entailment", "neutral")',
                          'XVNLI_LABELS = ("entailment", "contradiction", "neutral")',
                          "tests/test_cclm.py::test_xvnli_class_order_is_the_official_label_mapper"),
    "davinci_ve_class_order": ("zoo/models/davinci/model.py", 've_labels = ("contradiction", "neutral", "entailment")',
                               've_labels = ("entailment", "neutral", "contradiction")',
                               "tests/test_davinci.py::test_ve_class_order_is_official"),
}


def _pytest(test: str) -> tuple[int, float]:
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test], cwd=WORK,
                        env=env, capture_output=True, check=False).returncode
    return rc, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BUGS)}")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/testing.md")
    args = parser.parse_args()
    names = args.names or list(BUGS)
    unknown = [n for n in names if n not in BUGS]
    if unknown:
        parser.error(f"unknown bug name(s) {', '.join(unknown)}; expected any of: {', '.join(BUGS)}")
    _sync(WORK)
    missed, rows = [], ["| bug | file | planted change | test that fails |", "|---|---|---|---|"]
    for name in names:
        rel, old, new, test = BUGS[name]
        path = WORK / rel
        source = path.read_text(encoding="utf-8")
        if source.count(old) != 1:
            sys.exit(f"{name}: {rel} holds {old!r} {source.count(old)} times, expected once (update the list)")
        clean_rc, _ = _pytest(test)
        try:
            path.write_text(source.replace(old, new), encoding="utf-8")
            rc, seconds = _pytest(test)
        finally:
            path.write_text(source, encoding="utf-8")
        caught = clean_rc == 0 and rc != 0
        missed += [] if caught else [name]
        verdict = "caught" if caught else ("TEST FAILS WITHOUT THE BUG" if clean_rc else "NOT CAUGHT")
        print(f"{name:28s} {verdict:8s} {seconds:5.1f} s  {test}", flush=True)
        change = f"`{old}` → `{new}`".replace("|", "\\|")
        rows.append(f"| {name} | {rel} | {change} | `{test}` ({verdict}) |")
    if args.docs:
        doc = DOC.read_text(encoding="utf-8")
        begin, end = "<!-- planted:begin -->", "<!-- planted:end -->"
        a, b = doc.index(begin) + len(begin), doc.index(end)
        DOC.write_text(doc[:a] + "\n" + "\n".join(rows) + "\n" + doc[b:], encoding="utf-8")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
