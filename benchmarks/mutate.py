"""A small self-contained mutation runner: do the tests notice when the core code is wrong?

For each core module it lists plausible one-token mutations (comparison and arithmetic operator
swaps, `and`/`or`, dropped `not`, True/False, integer off-by-ones, dropped call statements), picks
a seeded sample of them, applies each one alone and runs that module's test files against it. A
mutant is *killed* when the tests fail, *survived* when they pass (a gap in the tests or an
equivalent mutant: read the diff), *timeout* when they hang (counted as killed).

Isolation: the mutants are written into a private copy of ``src/`` (under the output folder) and
the tests import it through ``PYTHONPATH``, so other people running the test suite from this
checkout at the same time never import a mutant. The copy's file is restored after every mutant
(try/finally), and at the end the runner checks that the real ``src/`` is byte-identical to how it
started (sha256 of every target plus ``git diff --quiet src/``).

    python benchmarks/mutate.py                       # every module, 8 mutants each
    python benchmarks/mutate.py --modules timing,receptive --limit 20
    python benchmarks/mutate.py --list                # how many candidates each module has

Writes ``OUT/report.json`` and ``OUT/report.md`` (default OUT: artifacts/mutate). Tests that
already fail on the unmutated code are deselected for that module (and listed in the report).
No dependency beyond pytest.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module key -> (source file, test files that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "timing": ("src/fopt/runtime/timing.py",
               ["tests/runtime/test_timing.py", "tests/runtime/test_timing_pinned.py"]),
    "artifacts": ("src/fopt/artifacts.py", ["tests/test_artifacts.py"]),
    "receptive": ("src/fopt/analyze/receptive.py", ["tests/analyze/test_receptive.py"]),
    "counting": ("src/fopt/analyze/counting.py",
                 ["tests/analyze/test_flops.py", "tests/analyze/test_roofline.py", "tests/analyze/test_analyze.py"]),
    "quantize": ("src/fopt/optimize/quantize.py", ["tests/optimize/test_quantize.py"]),
    "validate": ("src/fopt/export/validate.py", ["tests/export/test_export_validate.py"]),
}

COMPARE_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
                 "is": "is not", "in": "not in"}
BINOP_SWAPS = {"+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "**": "*"}
COMPARE_TOKENS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
                  ast.NotEq: "!=", ast.Is: "is", ast.In: "in"}
BINOP_TOKENS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
                ast.Mod: "%", ast.Pow: "**"}


@dataclass
class Mutation:
    module: str
    line: int
    kind: str
    start: int          # character offsets into the source
    end: int
    old: str
    new: str

    def apply(self, source: str) -> str:
        assert source[self.start:self.end] == self.old, (self, source[self.start:self.end])
        return source[:self.start] + self.new + source[self.end:]

    def describe(self) -> str:
        return f"{self.kind}: `{self.old.strip()}` -> `{self.new.strip()}`"


def _offsets(source: str) -> list[int]:
    starts, pos = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _op_between(source: str, a: int, b: int, ops: set[str]) -> tuple[int, int, str] | None:
    """The single operator token in source[a:b] (which may hold parentheses and comments)."""
    found = []
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(source[a:b]).readline))
    except (tokenize.TokenError, IndentationError):
        return None
    lines = _offsets(source[a:b])
    names = [t for t in toks if t.type in (tokenize.OP, tokenize.NAME)]
    for i, t in enumerate(names):
        s = a + lines[t.start[0] - 1] + t.start[1]
        e = a + lines[t.end[0] - 1] + t.end[1]
        if t.string == "is" and i + 1 < len(names) and names[i + 1].string == "not":
            return None                                   # `is not`: left alone
        if t.string == "not" and i + 1 < len(names) and names[i + 1].string == "in":
            return None                                   # `not in`: left alone
        if t.string in ops:
            found.append((s, e, t.string))
    return found[0] if len(found) == 1 else None


def candidates(key: str, source: str) -> list[Mutation]:
    tree = ast.parse(source)
    off = _offsets(source)
    pos = lambda line, col: off[line - 1] + col
    docs = _docstring_nodes(tree)
    out: list[Mutation] = []

    def add(node, kind, start, end, new):
        out.append(Mutation(key, node.lineno, kind, start, end, source[start:end], new))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                tok = COMPARE_TOKENS.get(type(op))
                if tok:
                    hit = _op_between(source, pos(left.end_lineno, left.end_col_offset),
                                      pos(right.lineno, right.col_offset), {tok})
                    if hit:
                        add(node, "compare", hit[0], hit[1], COMPARE_SWAPS[tok])
                left = right
        elif isinstance(node, ast.BinOp):
            tok = BINOP_TOKENS.get(type(node.op))
            if tok and not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
                hit = _op_between(source, pos(node.left.end_lineno, node.left.end_col_offset),
                                  pos(node.right.lineno, node.right.col_offset), {tok})
                if hit:
                    add(node, "arith", hit[0], hit[1], BINOP_SWAPS[tok])
        elif isinstance(node, ast.BoolOp) and len(node.values) == 2:
            tok = "and" if isinstance(node.op, ast.And) else "or"
            a, b = node.values
            hit = _op_between(source, pos(a.end_lineno, a.end_col_offset), pos(b.lineno, b.col_offset), {tok})
            if hit:
                add(node, "boolean", hit[0], hit[1], "or" if tok == "and" else "and")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            s = pos(node.lineno, node.col_offset)
            inner = pos(node.operand.lineno, node.operand.col_offset)
            add(node, "drop-not", s, inner, "")
        elif isinstance(node, ast.Constant) and id(node) not in docs:
            s, e = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
            if isinstance(node.value, bool):
                add(node, "bool-flip", s, e, str(not node.value))
            elif isinstance(node.value, int) and source[s:e].isdigit():
                add(node, "off-by-one", s, e, str(node.value + 1))
            elif isinstance(node.value, float) and re.fullmatch(r"[0-9.eE+-]+", source[s:e]):
                add(node, "constant", s, e, repr(node.value * 2 if node.value else 1.0))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            s, e = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
            add(node, "drop-call", s, e, "pass")
    # the same span mutated twice the same way (e.g. nested nodes) only once
    seen, unique = set(), []
    for m in sorted(out, key=lambda m: (m.start, m.end, m.new)):
        if (m.start, m.end, m.new) not in seen:
            seen.add((m.start, m.end, m.new))
            unique.append(m)
    return unique


def sample(muts: list[Mutation], limit: int | None, seed: int) -> list[Mutation]:
    if limit is None or limit >= len(muts):
        return muts
    rng = random.Random(seed)
    return sorted(rng.sample(muts, limit), key=lambda m: m.start)


def run_tests(tests: list[str], src_copy: Path, timeout: float, deselect: list[str]) -> tuple[str, float, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src_copy), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "--no-header",
           *tests, *(a for d in deselect for a in ("--deselect", d))]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "passed", time.perf_counter() - t0, out
    return ("failed" if proc.returncode == 1 else f"error{proc.returncode}"), time.perf_counter() - t0, out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", default=",".join(MODULES), help=f"comma list of {', '.join(MODULES)}")
    ap.add_argument("--limit", type=int, default=8, help="mutants per module (seeded sample); 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-factor", type=float, default=3.0,
                    help="a mutant's test run is cut at this many times the baseline (min 60 s)")
    ap.add_argument("--out", default="artifacts/mutate")
    ap.add_argument("--list", action="store_true", help="only count the candidate mutations")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.modules.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")

    if args.list:
        for k in keys:
            print(f"{k:10s} {len(candidates(k, (REPO / MODULES[k][0]).read_text()))} candidates")
        return 0

    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "src-copy"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    before = {k: _sha(REPO / MODULES[k][0]) for k in keys}
    git_clean_before = subprocess.run(["git", "diff", "--quiet", "--", "src/"], cwd=REPO, check=False).returncode == 0

    t_start = time.perf_counter()
    results, modules_info = [], {}
    try:
        for k in keys:
            rel, tests = MODULES[k]
            target = work / rel
            original = target.read_text()
            muts = candidates(k, original)
            picked = sample(muts, args.limit or None, args.seed)
            status, base_s, text = run_tests(tests, work / "src", 1800, [])
            deselect = re.findall(r"^FAILED (\S+)", text, re.MULTILINE)
            if status != "passed" and deselect:        # tests that already fail: leave them out
                status, base_s, text = run_tests(tests, work / "src", 1800, deselect)
            info = {"file": rel, "tests": tests, "candidates": len(muts), "sampled": len(picked),
                    "baseline": status, "baseline_s": round(base_s, 1), "deselected_failing": deselect}
            modules_info[k] = info
            print(f"[{k}] {len(muts)} candidates, {len(picked)} sampled; baseline {status} in {base_s:.0f} s"
                  + (f" (deselected {len(deselect)} already-failing)" if deselect else ""), flush=True)
            if status != "passed":
                info["skipped"] = "the tests do not pass on the unmutated code"
                continue
            timeout = max(60.0, args.timeout_factor * base_s)
            for i, m in enumerate(picked, 1):
                mutated = m.apply(original)
                try:
                    ast.parse(mutated)
                except SyntaxError:
                    continue
                try:
                    target.write_text(mutated)
                    st, secs, text = run_tests(tests, work / "src", timeout, deselect)
                finally:
                    target.write_text(original)
                verdict = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}.get(st, f"killed ({st})")
                failing = re.findall(r"^FAILED (\S+)", text, re.MULTILINE)
                diff = "".join(difflib.unified_diff(original.splitlines(True), mutated.splitlines(True),
                                                    rel, rel, n=0))
                results.append({**asdict(m), "description": m.describe(), "verdict": verdict,
                                "seconds": round(secs, 1), "killed_by": failing[:3], "diff": diff})
                print(f"  {i}/{len(picked)} {rel}:{m.line} {m.describe():50s} {verdict} ({secs:.0f} s)", flush=True)
    finally:
        restored = all(_sha(REPO / MODULES[k][0]) == before[k] for k in keys)
        git_clean = subprocess.run(["git", "diff", "--quiet", "--", "src/"], cwd=REPO, check=False).returncode == 0
        shutil.rmtree(work, ignore_errors=True)

    total_s = time.perf_counter() - t_start
    killed = sum(r["verdict"].startswith("killed") for r in results)
    survived = [r for r in results if r["verdict"] == "survived"]
    per_module = {k: {"killed": sum(r["verdict"].startswith("killed") for r in results if r["module"] == k),
                      "survived": sum(r["verdict"] == "survived" for r in results if r["module"] == k)}
                  for k in keys}
    report = {"seed": args.seed, "limit": args.limit, "seconds": round(total_s, 1),
              "killed": killed, "survived": len(survived),
              "score": round(killed / len(results), 3) if results else None,
              "src_unchanged": restored, "git_diff_src_clean": git_clean,
              "git_diff_src_clean_before": git_clean_before,
              "modules": {k: {**modules_info.get(k, {}), **per_module[k]} for k in keys},
              "mutants": results}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"# Mutation testing ({time.strftime('%Y-%m-%d %H:%M')})", "",
          (f"{killed} killed, {len(survived)} survived of {len(results)} mutants "
           f"({killed / max(len(results), 1):.0%} killed) in {total_s / 60:.1f} min; seed {args.seed}, "
           f"{args.limit or 'all'} per module. src/ unchanged afterwards: {restored and git_clean}."), "",
          "| module | candidates | sampled | killed | survived | baseline s |", "|---|---|---|---|---|---|"]
    for k in keys:
        i = report["modules"][k]
        md.append(f"| {k} | {i.get('candidates', '')} | {i.get('sampled', '')} | {i['killed']} | {i['survived']} "
                  f"| {i.get('baseline_s', '')} |")
    md += ["", "## Survived (tests did not notice; a gap or an equivalent mutant)", ""]
    md += [f"- `{r['module']}` line {r['line']}: {r['description']}" for r in survived] or ["- none"]
    md += ["", "## Killed", ""]
    md += [f"- `{r['module']}` line {r['line']}: {r['description']} ({r['verdict']}; "
           f"{', '.join(r['killed_by']) or 'see log'})" for r in results if r["verdict"] != "survived"] or ["- none"]
    desel = {k: i.get("deselected_failing") for k, i in report["modules"].items() if i.get("deselected_failing")}
    if desel:
        md += ["", "## Tests already failing on the unmutated code (deselected)", ""]
        md += [f"- {k}: {', '.join(v)}" for k, v in desel.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print(f"{killed} killed, {len(survived)} survived in {total_s:.0f} s -> {out / 'report.md'}")
    if not restored or (git_clean_before and not git_clean):
        changed = [MODULES[k][0] for k in keys if _sha(REPO / MODULES[k][0]) != before[k]]
        dirty = subprocess.run(["git", "diff", "--name-only", "--", "src/"], cwd=REPO, capture_output=True,
                               text=True, check=False).stdout.split()
        print(f"error: src/ differs from how it was before the run: targets changed {changed}, "
              f"git diff src/ lists {dirty}. The runner writes only into its copy, so this is an edit "
              f"(or a commit) made by someone else during the run; rerun on a quiet checkout to be sure.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
