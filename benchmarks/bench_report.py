"""bench.py's output: method names and order, the markdown tables (details, summary, largest batches, checks)
and the files a run writes."""
from __future__ import annotations

import json
import os

FLOOR_FACTOR = 3.0  # --check passes a parameter whose error is within max(tol, this × the fp32 reference's own)
PEER_METHODS = ("opacus", "opacus_ghost", "opacus_oop", "opacus_ghost_oop", "fastdp", "fastdp_ghost", "private_vision")
NON_PRIVATE = ("compile", "eager")  # the reference of ratios: compile, else eager
METHOD_TITLES = {
    "eager": "non-DP eager", "compile": "non-DP torch.compile", "compile_graphs": "non-DP torch.compile, CUDA graphs",
    "opacus": "Opacus hooks",
    "opacus_ghost": "Opacus ghost", "opacus_oop": "Opacus hooks (out-of-place add)",
    "opacus_ghost_oop": "Opacus ghost (out-of-place add)", "fastdp": "fastDP BK-MixOpt",
    "fastdp_ghost": "fastDP BK-MixGhostClip", "private_vision": "private_vision mixed ghost",
}


def method_order(m: str) -> tuple:
    """Canonical column order: non-private, dpcompile, peers, anything else."""
    if m in NON_PRIVATE:
        return (0, -NON_PRIVATE.index(m), m)
    if m == "compile_graphs":
        return (0, 1, m)
    if m.startswith("dp_"):
        return (1, 0, m)
    return (2, PEER_METHODS.index(m) if m in PEER_METHODS else 99, m)


def method_title(m: str, args) -> str:
    if m.startswith("dp_"):
        return f"dpcompile {m[3:]}" + ("" if args.dp_backend == "inductor" else f" ({args.dp_backend})")
    if m == "compile" and getattr(args, "compile_backend", "inductor") != "inductor":
        return f"non-DP torch.compile ({args.compile_backend})"
    return METHOD_TITLES.get(m, m)


def cell(r: dict | None, ref: dict | None, short: bool = False) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        if r["status"] == "fails":
            msg = r["error"]
            return "fails: " + (msg[:70] + "…" if short and len(msg) > 70 else msg).replace("|", "\\|")
        return r["status"]
    s = f"{r['ms']:.1f}"
    if r.get("peak_gib") is not None:
        s += f", {r['peak_gib']:.2f}"
    if ref and ref.get("status") == "ok" and ref is not r:
        s += f" ({r['ms'] / ref['ms']:.2f}×)"
    return s


def markdown(results: dict, args) -> str:
    env = results["env"]
    amp = results.get("amp", "fp32")
    precision = "fp32" if amp == "fp32" else "bf16 autocast of forward and loss (parameters, gradients, SGD in fp32)"
    peers = env.get("peers")
    later = [r for r in results.get("runs", [])[1:] if r.get("git") != env["git"] or r.get("device") != env["device"]]
    L = [f"# dpcompile benchmark — {env['device']}, {amp}", "",
         f"- date: {env['date_utc']}; torch {env['torch']}; CUDA {env['cuda']}; cuDNN {env['cudnn']}; "
         f"Python {env['python']}; opacus {env['opacus']}; dpcompile {env['dpcompile']}; git {env['git']}; amp {amp}"
         + (f"; peers from {peers['dir']}: fastDP {peers.get('fastDP')}, private_vision {peers.get('private_vision')}"
            if peers else ""),
         f"- {env['inputs']}; {precision} (TF32 matmul {env['tf32_matmul']}, TF32 cuDNN conv {env['tf32_cudnn']}, "
         f"cudnn.benchmark {env['cudnn_benchmark']}); SGD lr {args.lr}; σ={args.noise_multiplier}, R={args.max_grad_norm}; "
         f"dpcompile backend {args.dp_backend}; "
         f"non-DP torch.compile backend {getattr(args, 'compile_backend', 'inductor')}",
         f"- ms/step: median of {args.steps} timed steps (synchronize + perf_counter around each) after "
         f"{args.warmup} warm-up steps; peak GiB: torch.cuda.max_memory_allocated over the timed steps; "
         f"(×) time relative to non-DP torch.compile."]
    L += [f"- resumed {r['date_utc']} on {r['device']}, git {r['git']}" for r in later]
    L += [""]
    methods = results["methods"] if results["configs"] else []
    if methods:
        L += ["| model, input, batch | " + " | ".join(method_title(m, args) for m in methods) + " |",
              "| --- |" + " --- |" * len(methods)]
        for c in results["configs"]:
            rs = c["results"]
            L.append(f"| {c['title']} | "
                     + " | ".join(cell(rs.get(m), rs.get("compile"), short=True) for m in methods) + " |")
        L += ["", "Cells: ms/step, peak GiB (time ÷ non-DP compiled).", "",
              "## Details", "",
              "| config | method | ms/step median | min | back-to-back | peak GiB | × compiled time | "
              "× compiled memory | first step s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in results["configs"]:
        ref = c["results"].get("compile")
        okref = ref is not None and ref.get("status") == "ok"
        for m in methods:
            r = c["results"].get(m)
            if r is None or (c.get("status") and r["status"] == c["status"]):  # the config's own row says it
                continue
            if r["status"] != "ok":
                L.append(f"| {c['name']} | {method_title(m, args)} | {cell(r, None)} | | | | | | |")
                continue
            tr = f"{r['ms'] / ref['ms']:.2f}" if okref else "—"
            mr = (f"{r['peak_gib'] / ref['peak_gib']:.2f}" if okref and r.get("peak_gib") and ref.get("peak_gib")
                  else "—")
            pk = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "—"
            L.append(f"| {c['name']} | {method_title(m, args)} | {r['ms']:.2f} | {r['ms_min']:.2f} | "
                     f"{r['ms_pipelined']:.2f} | {pk} | {tr} | {mr} | {r['first_step_s']:.1f} |")
        if c.get("error"):
            L.append(f"| {c['name']} | (config) | fails: {c['error']} | | | | | | |")
        if c.get("status"):
            L.append(f"| {c['name']} | (config) | {c['status']} | | | | | | |")
    if results.get("check"):
        L += ["", "## Gradient check (dpcompile, σ=0, vs torch.func per-sample reference, TF32 off, R = median per-sample norm)", "",
              "| model | policy | max relative error (param) | whole gradient | vs fp32 reference: max, whole | "
              "fp32 reference's own error | worst error ÷ allowed (param) | R | clipped | result |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["check"]:
            if r.get("status") == "ok":
                L.append(f"| {r['model']} | {r['policy']} | {r['max_rel_err']:.2e} ({r['worst_param']}) | "
                         f"{r['total_rel_err']:.2e} | {r['max_rel_err_vs_f32']:.2e}, {r['total_rel_err_vs_f32']:.2e} | "
                         f"{r['fp32_floor']:.2e} | {r['worst_over_allowed']:.2f} ({r['worst_over_allowed_param']}) | "
                         f"{r['clip']:.3g} | {r['frac_clipped']:.0%} | {'PASS' if r['passed'] else 'FAIL'} |")
            else:
                L.append(f"| {r['model']} | {r.get('policy', '')} | {r['status']}: {r.get('error', '')} | | | | | | | |")
        L += ["", "Relative errors ‖Δ‖/‖ref‖ of dpcompile's gradient (σ=0, fp32) against the torch.func per-sample "
                  "reference computed in float64 (and, secondary, in fp32). Allowed, per parameter and for the whole "
                  f"gradient: max({args.check_tol:g}, {FLOOR_FACTOR:g} × the fp32 reference's own error against "
                  "float64). PASS: all within, and no parameter without a gradient."]
    L += summary(results, methods, args)
    L += largest_batch_table(results, methods, args)
    if results.get("skipped"):
        L += ["", f"Skipped (budget of {args.budget_seconds} s): {', '.join(results['skipped'])}"]
    return "\n".join(L) + "\n"


def ok(r: dict | None) -> bool:
    return r is not None and r.get("status") == "ok"


def lb_text(lb) -> str:
    """A largest-batch record as one cell: "≥" where the search stopped before bracketing it within 10%."""
    if not isinstance(lb, dict):
        return str(lb)
    return ("" if lb.get("converged") else "≥ ") + str(lb["batch"])


def summary(results: dict, methods: list[str], args) -> list[str]:
    """Per config: dpcompile's best policy against non-DP compiled (time, memory, largest batch), the fastest peer."""
    rows = []
    for c in results["configs"]:
        rs = c["results"]
        ref = rs.get("compile")
        dps = [(m, rs[m]) for m in methods if m.startswith("dp_") and ok(rs.get(m))]
        if not dps:
            st = c.get("status") or next((rs[m]["status"] for m in methods if m.startswith("dp_") and m in rs), "—")
            rows.append(f"| {c['title']} | {st} | | | | | |")
            continue
        m, r = min(dps, key=lambda mr: mr[1]["ms"])
        best = f"{m[3:]}: {r['ms']:.1f} ms" + (f", {r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None else "")
        t = f"{r['ms'] / ref['ms']:.2f}×" if ok(ref) else "—"
        mem = (f"{r['peak_gib'] / ref['peak_gib']:.2f}×" if ok(ref) and r.get("peak_gib") and ref.get("peak_gib")
               else "—")
        peers = [(p, rs[p]) for p in methods if p in PEER_METHODS and ok(rs.get(p))]
        if peers:
            p, pr = min(peers, key=lambda mr: mr[1]["ms"])
            peer = f"{METHOD_TITLES.get(p, p)}: {pr['ms']:.1f} ms | {pr['ms'] / r['ms']:.2f}×"
        else:
            tried = [p for p in methods if p in PEER_METHODS and p in rs]
            peer = ("none ran (" + ", ".join(f"{p} {rs[p]['status'].split(' (')[0]}" for p in tried) + ")"
                    if tried else "—") + " | —"
        lbs = []
        ref_lb = next((rs[n]["largest_batch"] for n in NON_PRIVATE
                       if isinstance(rs.get(n, {}).get("largest_batch"), dict)), None)
        for dm in methods:
            lb = rs.get(dm, {}).get("largest_batch") if dm.startswith("dp_") else None
            if isinstance(lb, dict) and ref_lb:
                lbs.append(f"{dm[3:]} {lb['batch'] / ref_lb['batch']:.2f} ({lb_text(lb)} / {lb_text(ref_lb)})")
        rows.append(f"| {c['title']} | {best} | {t} | {mem} | {peer} | {'; '.join(lbs) or '—'} |")
    if not rows:
        return []
    return ["", "## Summary", "",
            "| model, input, batch | dpcompile, best policy | time × non-DP compiled | memory × non-DP compiled | "
            "fastest peer | peer time ÷ dpcompile time | largest batch, dpcompile ÷ non-DP |",
            "| --- | --- | --- | --- | --- | --- | --- |", *rows]


def largest_batch_table(results: dict, methods: list[str], args) -> list[str]:
    rows = []
    for c in results["configs"]:
        for m in methods:
            lb = c["results"].get(m, {}).get("largest_batch")
            if lb is None:
                continue
            if not isinstance(lb, dict):
                rows.append(f"| {c['name']} | {method_title(m, args)} | {lb} | | | | | |")
                continue
            bad = [t for t in lb["attempts"] if not t["fits"]]
            note = "; ".join(filter(None, [
                "stopped at its time cap" if lb["capped"] else "",
                "" if lb["converged"] else "not bracketed within 10%",
                {None: "a fresh setup per try", 0.0: "the timed run's setup"}.get(lb.get("setup_s"),
                                                                              f"one setup ({lb.get('setup_s')} s)"),
                *(f"{t['batch']}: {t['error']}" for t in bad if t["error"] and t["error"] != "out of memory")]))
            peak = max((t["peak_gib"] for t in lb["attempts"] if t["fits"] and t["peak_gib"]), default=None)
            rows.append(f"| {c['name']} | {method_title(m, args)} | {lb_text(lb)} | {lb['fails_at'] or '—'} | "
                        f"{len(lb['attempts'])} | {peak and f'{peak:.1f}' or '—'} | {lb['seconds']:.0f} | "
                        f"{note.replace('|', '/')} |")
    if not rows:
        return []
    return ["", "## Largest batch (one training step per try; synthetic batch)", "",
            "| config | method | largest batch that fits | smallest that failed | attempts | its peak GiB | search s "
            "| note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows]


def save(results: dict, args) -> None:
    """<out>/<name>.json, .md and -plans.txt, each written whole then renamed (a kill mid-write keeps the last)."""
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    js = json.loads(json.dumps(results, default=str))

    def write(path: str, text: str) -> None:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    write(stem + ".json", json.dumps(js, indent=1))
    write(stem + ".md", markdown(results, args))
    plans = [(c["name"], m, r["explain"]) for c in results["configs"] for m, r in c["results"].items() if r.get("explain")]
    if plans:
        write(stem + "-plans.txt", "".join(f"==== {cname} / {m} ====\n{text}\n\n" for cname, m, text in plans))
