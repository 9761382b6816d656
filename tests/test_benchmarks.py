"""benchmarks/bench.py on a CPU: the smoke config end to end (fp32 and bf16), statuses instead of exceptions for
what is missing, --resume, the largest-batch search on a simulated memory, and the peers where their sources are."""
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import dpcompile

ROOT = Path(__file__).parents[1]


def load_script(name: str):
    """benchmarks/<name>.py as a module (loaded once)."""
    key = f"dpcompile_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[key]


bench = load_script("bench")
import bench_common  # noqa: E402  (its parts beside bench.py, which puts its folder on sys.path)
import bench_configs  # noqa: E402
import bench_largest  # noqa: E402
QUICK = ["--device", "cpu", "--configs", "smoke", "--dp-backend", "eager", "--steps", "1", "--warmup", "1"]


def run(tmp_path, name, *argv):
    results = bench.main([*QUICK, "--out", str(tmp_path), "--name", name, *argv])
    with open(tmp_path / f"{name}.json") as f:
        saved = json.load(f)
    return results, saved, (tmp_path / f"{name}.md").read_text()


def statuses(saved, config="smoke"):
    return {m: r["status"] for m, r in next(c for c in saved["configs"] if c["name"] == config)["results"].items()}


def check_smoke_run(saved, md, amp):
    assert saved["amp"] == amp and f"amp {amp}" in md.splitlines()[2]
    rs = saved["configs"][0]["results"]
    assert statuses(saved) == {"eager": "ok", "compile": "ok", "dp_mixed": "ok"}, rs
    assert all(r["ms"] > 0 and r["first_step_s"] >= 0 for r in rs.values())
    smoke_row = next(line for line in md.splitlines() if line.startswith("| smoke: small CNN"))
    assert smoke_row.count("×)") == 2  # eager and dpcompile against the compiled step
    summary = md[md.index("## Summary"):]
    assert "mixed:" in summary and "×" in summary


@pytest.mark.inductor
def test_smoke_fp32_writes_json_and_markdown_with_ratios(tmp_path):
    _, saved, md = run(tmp_path, "fp32", "--methods", "eager,compile,dp_mixed", "--largest-batch", "dp_mixed")
    check_smoke_run(saved, md, "fp32")
    assert saved["configs"][0]["results"]["dp_mixed"]["largest_batch"] == "n/a (cpu)"
    assert "## Largest batch" in md and "n/a (cpu)" in md
    assert (tmp_path / "fp32-plans.txt").exists()


@pytest.mark.slow  # the fp32 smoke run is in the default suite
def test_smoke_bf16_autocast(tmp_path):
    _, saved, md = run(tmp_path, "bf16", "--methods", "eager,compile,dp_mixed", "--amp", "bf16",
                       "--compile-backend", "aot_eager")
    check_smoke_run(saved, md, "bf16")
    assert "bf16 autocast" in md


def test_missing_packages_and_peers_are_statuses_and_resume_keeps_what_ran(tmp_path, monkeypatch):
    absent = bench.Config("needs_absent", "needs an absent package", lambda: nn.Linear(2, 2), (2,), 2, 4,
                          requires=("dpcompile_no_such_package",))
    monkeypatch.setitem(bench.CONFIGS, "needs_absent", absent)
    missing = {name: package for name, package in (("tv_resnet18_32", "torchvision"), ("timm_vit_s16_224", "timm"))
               if importlib.util.find_spec(package) is None}  # where they are installed they would run: slow on a CPU
    common = ["--configs", ",".join(["smoke", "needs_absent", *missing]), "--peers", str(tmp_path / "none")]
    _, first, _ = run(tmp_path, "r", *common, "--methods", "eager")
    _, saved, md = run(tmp_path, "r", *common, "--methods", "eager,fastdp,private_vision,opacus,opacus_oop",
                       "--resume")

    assert saved["configs"][0]["results"]["eager"]["ms_steps"] == first["configs"][0]["results"]["eager"]["ms_steps"]
    smoke = statuses(saved)
    assert smoke["eager"] == "ok"
    assert smoke["fastdp"].startswith("unavailable (no fastDP/ in the peers folder")
    assert smoke["private_vision"].startswith("unavailable (no private_vision/")
    assert smoke["opacus"] == "ok" or smoke["opacus"].startswith("unavailable")
    assert smoke["opacus_oop"] == smoke["opacus"]  # no in-place residual: the model as it is (the suite's default)
    assert set(statuses(saved, "needs_absent").values()) == {"unavailable (no dpcompile_no_such_package)"}
    for name, package in missing.items():
        assert set(statuses(saved, name).values()) == {f"unavailable (no {package})"}
        assert f"unavailable (no {package})" in md
    assert len(saved["runs"]) == 2
    with pytest.raises(SystemExit, match="amp"):
        bench.main([*QUICK, "--out", str(tmp_path), "--name", "r", "--methods", "eager", "--amp", "bf16", "--resume"])


def test_config_groups_and_torchvision_helpers():
    suite = bench.parse_args(["--configs", "suite", "--methods", "eager,dpcompile", "--policies", "mixed,auto"])
    assert suite.configs == ["resnet18_32", "wrn16_4_32", "resnet18_224", "resnet50_224", "vit_s16_224",
                             "tv_resnet18_32", "tv_resnet18_224", "tv_resnet50_224", "timm_vit_s16_224"]
    assert suite.methods == ["eager", "dp_mixed", "dp_auto"]
    assert bench.parse_args(["--configs", "cifar,resnet18_32,tv_cifar"]).configs == [
        "resnet18_32", "wrn16_4_32", "tv_resnet18_32"]
    model = nn.Sequential(nn.Conv2d(3, 48, 3), nn.BatchNorm2d(48), nn.ReLU(inplace=True),
                          nn.Sequential(nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)))
    model = bench_configs.relu_not_inplace(bench_configs.group_norm_everywhere(model))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(16, 48), (16, 16)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    model(torch.randn(2, 3, 8, 8)).sum().backward()


def simulated(fixed_gib, per_sample_gib, limit_gib):
    """attempt(b) on a card where a step at batch b needs fixed + b·per-sample GiB and at most limit GiB fit."""
    def attempt(b):
        peak = (fixed_gib + per_sample_gib * b) * 2**30
        return (True, peak, None) if peak <= limit_gib * 2**30 else (False, None, "out of memory")
    return attempt


@pytest.mark.parametrize("fixed, per_sample, limit, start", [
    (0.1, 0.001, 130, 256),   # far above the config's batch: jumps, not 9 doublings
    (2.0, 0.04, 130, 32),
    (50, 0.3, 130, 64),       # large fixed cost
    (0.2, 0.001, 0.6, 256),   # barely above the config's batch, and far below the free memory's prediction
])
def test_largest_batch_search_brackets_within_ten_percent(fixed, per_sample, limit, start):
    true_max = (limit - fixed) / per_sample
    found = bench_largest.search_largest_batch(simulated(fixed, per_sample, limit), start,
                                       (fixed + per_sample * start) * 2**30, capacity=140 * 2**30)
    assert found["converged"] and not found["capped"] and len(found["attempts"]) <= 8
    assert found["batch"] <= true_max < found["fails_at"] <= found["batch"] * 1.1


def test_largest_batch_search_stops_at_its_time_cap():
    now = [0.0]

    def clock():
        now[0] += 50.0  # each attempt (and each look at the clock) takes a while
        return now[0]
    found = bench_largest.search_largest_batch(simulated(0.1, 0.001, 130), 256, 0.4 * 2**30, 140 * 2**30, seconds=120,
                                       clock=clock)
    assert found["capped"] and 1 <= len(found["attempts"]) < 8 and found["batch"] >= 256


def test_largest_batch_search_goes_on_after_one_slow_try():
    """A first try that recompiles (inductor's 32-bit indexing guards at 2^31 elements) takes longer than the cap
    has left for one more try at that pace; the tries after it are fast and the search brackets the batch."""
    now, tries = [0.0], []
    fits = simulated(0.1, 0.001, 130)

    def attempt(b):
        now[0] += 125.0 if not tries else 5.0
        tries.append(b)
        return fits(b)
    found = bench_largest.search_largest_batch(attempt, 256, 0.4 * 2**30, 140 * 2**30, seconds=240, clock=lambda: now[0])
    assert found["converged"] and not found["capped"] and found["attempts"][0]["s"] == 125.0
    assert found["batch"] <= (130 - 0.1) / 0.001 < found["fails_at"]


@pytest.mark.slow
@pytest.mark.parametrize("method, origin", [("dp_mixed", "timed run"), ("compile", "own setup")])  # each once
def test_largest_batch_tries_step_one_compiled_setup_at_every_batch(method, origin):
    args = bench.parse_args([*QUICK, "--methods", method])
    cfg, device = bench.CONFIGS["smoke"], torch.device("cpu")
    bench.reset_dynamo()
    if origin == "own setup":
        stepped = bench.SteppedSetup.compiled(cfg, method, cfg.build(), args, device, 4)
    else:  # the setup the method was timed with (time_method's search on a GPU)
        setup, kw, _ = bench.method_setup(method)
        model = cfg.build()
        res, step, extra = bench._time_steps(setup, kw, model, *bench.make_batch(cfg, device, 4), args, device)
        assert res["status"] == "ok"
        stepped = bench.SteppedSetup(cfg, device, model, step, extra)
    params = [p.detach().clone() for p in stepped.model.parameters()]
    sizes = (8, 3, 16, 32, 5)
    assert [stepped.try_batch(b) for b in sizes] == [(True, None, None)] * len(sizes)
    assert all(p.grad is None for p in stepped.model.parameters())  # each step completed (zero_grad)
    assert any(not torch.equal(a, p) for a, p in zip(params, stepped.model.parameters()))  # and trained
    if method.startswith("dp_"):
        # a dynamic batch: one capture for all sizes, or two where a size guard splits them (CPU convolutions:
        # batches under 16 and from 16 on), not one per size
        assert stepped.extra["compilations"]() <= 2
    assert bench.reuses_setup(method) and not bench.reuses_setup(method + "_graphs") \
        and not bench.reuses_setup("opacus") and not bench.reuses_setup("eager")


def test_out_of_memory_is_recognised_through_wrappers():
    try:
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError as inner:
            raise ValueError("backend compiler failed") from inner
    except ValueError as e:
        assert bench_common.is_oom(e)
    assert not bench_common.is_oom(RuntimeError("shape mismatch"))


def peers_folder():
    folder = os.environ.get("DPCOMPILE_PEERS") or str(ROOT.parent / "shared" / "peers")
    return folder if os.path.isdir(folder) else None


@pytest.mark.skipif(peers_folder() is None, reason="no peers' sources ($DPCOMPILE_PEERS or <repo>/../shared/peers)")
def test_peers_run_on_the_smoke_config(tmp_path):
    _, saved, md = run(tmp_path, "peers", "--methods", "fastdp,private_vision", "--peers", peers_folder())
    for method, r in saved["configs"][0]["results"].items():
        if r["status"].startswith("unavailable"):  # e.g. fastDP's import of transformers
            continue
        assert r["status"] == "ok", (method, r)
        assert r["ms"] > 0
    assert "fastDP" in saved["env"]["peers"] and "private_vision" in saved["env"]["peers"]


def test_dp_throughput_builds_the_suites_models_as_the_suite_defines_them():
    """dp_throughput's (model, size) of a suite config is that config's model: ResNet-18 at 224² with ImageNet's
    stem (7×7 stride-2 convolution and max-pool) and 1000 classes, at 32² the small-input stem and 10 classes; the
    suite's one-run tables of the forty-seventh and forty-eighth sessions had timed a small-input ResNet-18 at 224²
    (16× the FLOPs) as "ResNet-18 (GN) 224²"."""
    module = load_script("dp_throughput")
    imagenet, classes = module.build("resnet18_gn", 224)
    assert classes == 1000 and imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert not isinstance(imagenet.maxpool, torch.nn.Identity) and imagenet.fc.out_features == 1000
    cifar, classes = module.build("resnet18_gn", 32)
    assert classes == 10 and cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert (module.build("resnet50_gn", 224)[1], module.build("vit_s16", 224)[1], module.build("wrn16_4", 32)[1]) \
        == (1000, 1000, 10)
    assert module.build("resnet18_gn", 128)[0].conv1.kernel_size == (7, 7)  # not a suite size: ImageNet's stem


@pytest.mark.slow
def test_dp_throughput_runs_on_a_cpu_with_phases_and_the_allreduce_timer():
    module = load_script("dp_throughput")
    result = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "2", "--warmup", "1",
                          "--backend", "eager", "--device", "cpu", "--phases", "--inductor-config", "max_autotune=False"])
    assert result["world"] == 1 and result["samples_per_s_per_gpu"] > 0 and result["first_step_s"] >= 0
    assert set(result["phases_ms"]) == {"forward", "backward", "step"}
    assert result["inductor_config"] == {"max_autotune": False}
    profiled = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "1", "--warmup", "1",
                            "--backend", "eager", "--device", "cpu", "--policy", "per_sample", "--profile"])
    products = profiled["products"]  # the per-sample products among them: batched over the 3 samples
    assert products and all(r["op"] in module.PRODUCTS and r["cpu_ms"] >= 0 for r in products)
    assert any(r["op"] == "aten::bmm" and r["shapes"].startswith("[[3,") for r in products), products
    assert profiled["kernel_ms_per_step"] == 0  # no device here
    mixed = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "1", "--warmup", "1",
                         "--backend", "eager", "--device", "cpu", "--amp", "bf16", "--policy", "auto",
                         "--auto-extra-memory", "0.05"])
    assert mixed["amp"] == "bf16" and mixed["samples_per_s_per_gpu"] > 0 and mixed["auto_extra_memory"] == 0.05
    with pytest.raises(dpcompile.ConfigError, match="auto_extra_memory"):  # the setting reaches dpcompile()
        module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--backend", "eager", "--device", "cpu",
                     "--auto-extra-memory", "-1"])
    reference = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "1", "--warmup", "1",
                             "--backend", "eager", "--device", "cpu", "--method", "compile", "--dynamic"])
    assert reference["policy"] == "non-private" and reference["host_ms"] > 0 and reference["dynamic"]
    drawn = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "6", "--warmup", "1",
                         "--backend", "eager", "--device", "cpu", "--poisson", "1000", "--batch-bucket", "4"])
    sizes = module.poisson_sizes(1000, 3, 7, 0)  # the warm-up step's and the six timed steps' batch sizes
    assert sizes == module.poisson_sizes(1000, 3, 7, 0) and min(sizes) > 0 and len(set(sizes)) > 1
    assert drawn["poisson"]["sizes_seen"] == len(set(sizes)) and drawn["batch_bucket"] == 4
    assert drawn["poisson"]["new_size_steps"] == sum(b not in sizes[:i] for i, b in enumerate(sizes) if i)
    timed = module.main(["--allreduce-mb", "0.25", "--device", "cpu"])
    assert timed["ms"] >= 0 and timed["world"] == 1
    from dpcompile.passes.rules import conv
    grid = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "1", "--warmup", "1",
                        "--backend", "eager", "--device", "cpu", "--policy", "ghost", "--ghost-on-grid", "--profile"])
    assert grid["ghost_on_grid"] and not conv.GHOST_ON_GRID  # on for its capture, put back after
    assert any(r["op"] == "aten::baddbmm" for r in grid["products"]), grid["products"]  # the grid's Gram sums ran
    from dpcompile.passes.rules import bounds
    default = bounds.FUSED_GRAM_DTYPES, conv.FUSED_GRAM_CONV_DEVICES
    fused = module.main(["--model", "small_cnn", "--size", "8", "--batch", "3", "--steps", "1", "--warmup", "1",
                         "--backend", "eager", "--device", "cpu", "--fused-gram-dtypes", "bfloat16,float32",
                         "--fused-gram-convs", "--grouped-tf32-convs", "--foreach-release"])
    assert fused["fused_gram_dtypes"] == "bfloat16,float32" and fused["fused_gram_convs"]
    assert fused["grouped_tf32_convs"] and not conv.GROUPED_TF32_CONV_DEVICES
    from dpcompile.passes import rewrite
    assert fused["foreach_release"] and not rewrite.FOREACH_RELEASE_DEVICES
    assert (bounds.FUSED_GRAM_DTYPES, conv.FUSED_GRAM_CONV_DEVICES) == default  # put back after


TRITON_WRAPPER = """
# kernel path: /tmp/torchinductor/ab/cab.py
# Topologically Sorted Source Nodes: [dp_norm_sq_6_conv2_weight_mul_27, dp_norm_sq_6_conv2_weight_sum_4], Original ATen: [aten.mul, aten.sum]
# Source node to ATen node mapping:
#   dp_norm_sq_6_conv2_weight_mul_27 => mul_27
triton_red_fused_mul_sum_0 = async_compile.triton('triton_red_fused_mul_sum_0', '''
import triton
''', device_str='cuda')

# Topologically Sorted Source Nodes: [convolution_backward], Original ATen: [aten.convolution_backward]
buf3 = torch.ops.aten.convolution_backward.default(buf1)
triton_poi_fused_1 = async_compile.triton('triton_poi_fused_1', '''
''', device_str='cuda')
"""


@pytest.mark.slow
def test_profiled_kernels_name_the_dp_nodes_they_compute(tmp_path):
    """dp_throughput --profile attributes each generated kernel's time to the nodes it computes: the DP passes'
    nodes carry inductor's provenance (listed in its source comments by their names, which name the stage and the
    parameter, and named in its kernels after their ops), and kernel_sources reads only the comment block right above
    a Triton kernel's definition (a comment above other code names no kernel)."""
    module = load_script("dp_throughput")
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(TRITON_WRAPPER)
    assert module.kernel_sources([wrapper]) == {
        "triton_red_fused_mul_sum_0": ["dp_norm_sq_6_conv2_weight_mul_27", "dp_norm_sq_6_conv2_weight_sum_4"]}
    from torch._inductor.codecache import PyCodeCache
    before = {getattr(m, "__file__", None) for m in PyCodeCache.modules}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with torch._inductor.config.patch(fx_graph_cache=False):  # a cached module may predate the names
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend="inductor")
        dp(torch.randn(3, 3, 6, 6)).square().sum().backward()
    emitted = {n.name for n in dp.graphs["backward_rewritten"].graph.nodes if n.name.startswith("dp_")}
    assert all(n.meta.get("partitioner_tag") == "is_backward" for n in dp.graphs["backward_rewritten"].graph.nodes
               if n.name in emitted and n.op == "call_function")
    text = "\n".join(Path(m.__file__).read_text() for m in PyCodeCache.modules
                     if getattr(m, "__file__", None) not in before)
    named = set(re.findall(r"Source Nodes: \[([^\]]*)\]", text))
    listed = {n.strip() for names in named for n in names.split(",")}
    assert listed & emitted, sorted(listed)[:20]


@pytest.mark.slow
def test_tf32_overclip_measures_each_sample_against_ieee():
    """benchmarks/tf32_overclip.py on a CPU (images resized): every sample's TF32 norm is at least its IEEE one (the
    margin only adds), the IEEE certified norm is at least the released gradient's own (an upper bound), and the
    ghost terms it names are the TF32 ones."""
    result = load_script("tf32_overclip").main(["--model", "small_cnn", "--size", "12", "--batch", "4", "--samples",
                                                 "2", "--backend", "eager", "--device", "cpu", "--policy", "ghost"])
    assert 0 < result["overclip_min"] <= result["overclip_median"] <= result["overclip_max"] < 0.1
    assert 0 <= result["certified_min"] <= result["certified_median"] <= result["certified_max"] < 0.1
    assert result["size"] == 12
    assert result["tf32_terms"] and all(name.endswith("weight") for name in result["tf32_terms"])


def test_pass_times_reports_each_pass_and_the_lowering(capsys):
    load_script("pass_times").main(["--models", "small_cnn", "--size", "8", "--batch", "3", "--clock", "wall",
                                    "--snippets", "3"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("small_cnn: DP passes"))
    for part in ("rewrite_backward", "numerical check", "lower forward", "lower backward", "first step"):
        assert part in line, line
    assert "wall time" in out and "backend eager" in out
    traces, nodes = map(int, re.search(r"snippet traces (\d+), (\d+) nodes", out).groups())
    assert re.search(r"ms a node\), 0 through make_fx$", out, re.MULTILINE), out  # emit.record traced them all
    listed = re.findall(r"^ +[0-9.]+ s +(\d+) traces +(\d+) nodes +(\S+)", out, re.MULTILINE)
    assert 0 < len(listed) <= 3 and any("emit_norm" in fn for *_, fn in listed), out
    assert 0 < sum(int(c) for c, *_ in listed) <= traces and 0 < sum(int(n) for _, n, _ in listed) <= nodes, out
    from dpcompile.backend import DPBackend
    from dpcompile.passes import emit
    assert DPBackend.lower.__name__ == "lower"  # the instrumentation is gone afterwards
    assert emit.trace_snippet.__name__ == "trace_snippet" and emit.make_fx.__name__ == "make_fx"


@pytest.mark.slow  # an inductor compile on the CPU; pass_times' other test is in the default suite
def test_pass_times_counts_the_dp_backwards_nodes_by_stage_and_the_kernels(capsys):
    """--nodes: every node of the rewritten backward counted once, under the stage its emitted name says; with inductor,
    the kernels it generated for each graph."""
    script = load_script("pass_times")
    script.main(["--models", "small_cnn", "--size", "8", "--batch", "3", "--backend", "inductor", "--nodes"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  DP backward:"))
    total, stages = re.match(r"  DP backward: (\d+) nodes \((.*?)\);", line).groups()
    counts = {label: int(n) for label, n in re.findall(r"([A-Za-z' -]+?) (\d+)(?:, |$)", stages)}
    assert {"norm bounds", "clipped sums", "noise and normalisation", "the model's own"} <= set(counts), line
    assert sum(counts.values()) == int(total), line
    kernels = {graph: int(n) for graph, n in re.findall(r"; (\w+): (\d+) kernels generated", line)}
    assert kernels.keys() == {"forward", "backward"} and kernels["backward"] > 0, line
    assert script.stage_counts(torch.fx.symbolic_trace(torch.nn.Linear(2, 2))) == {"the model's own": 1}


def test_pass_times_finds_inductors_phases_and_puts_them_back():
    """--phases times inductor's lowering phases by their names in torch: each of them is found on this torch (a
    rename would silently drop its figure), and the instrumentation is gone afterwards."""
    script = load_script("pass_times")
    found = {label: script.phase_owner(module, path) for module, path, label in script.PHASES}
    assert all(found[label] is not None for label in ("fake propagation", "post-grad passes", "lowering to IR",
                                                      "scheduling and fusion", "kernel code generation",
                                                      "waiting for kernel compiles")), found
    owner, attr = found["scheduling and fusion"]
    before = getattr(owner, attr)
    with script.instrumented():
        assert getattr(owner, attr) is not before
    assert getattr(owner, attr) is before


def test_cuda_graph_methods_are_named_and_set_up():
    """compile_graphs and dp_<policy>_graphs: CUDA-graph variants of the non-private and DP steps (on a CPU inductor
    leaves CUDA graphs out, so they run as the plain methods)."""
    assert bench.method_setup("compile_graphs")[1] == {"cuda_graphs": True}
    for method, policy, graphs, tf32, ghost_tf32 in (("dp_auto_graphs", "auto", True, None, None),
                                                      ("dp_mixed", "mixed", False, None, None),
                                                      ("dp_auto_ieee", "auto", False, False, False),
                                                      ("dp_auto_tf32_graphs", "auto", True, True, False),
                                                      ("dp_mixed_tf32", "mixed", False, True, False),
                                                      ("dp_auto_alltf32_graphs", "auto", True, True, True)):
        assert bench.method_setup(method)[1] == {"policy": policy, "cuda_graphs": graphs, "tf32": tf32,
                                                 "ghost_tf32": ghost_tf32}, method
    assert sorted(["dp_mixed", "compile_graphs", "compile"], key=bench.method_order) == \
        ["compile", "compile_graphs", "dp_mixed"]


def test_tf32_products_benchmark_splits_exactly_and_orders_its_bounds():
    """benchmarks/tf32_products.py (GPU only): its split x = hi + lo is exact with hi on TF32's grid, and its
    certified bounds order as the arithmetic does (IEEE < split TF32 < TF32) at every suite shape's T."""
    module = load_script("tf32_products")
    x = torch.randn(1000, dtype=torch.float32)
    hi, lo = module.split(x)
    assert torch.equal(hi + lo, x) and torch.equal(module.to_tf32(hi), hi)
    assert ((hi - x).abs() <= 2.0**-10 * x.abs()).all()
    for _, _, T, _ in module.SHAPES.values():
        assert module.bound("ieee", T) < module.bound("3xtf32", T) < module.bound("tf32", T)


def test_layer_costs_methods_agree_and_the_picks_are_among_them():
    """benchmarks/layer_costs.py (GPU timings) on small CPU shapes: every method of a layer gives the same per-sample
    norms, and what each policy picks is one of the methods timed (the stride-1 products over shifted windows
    included)."""
    module = load_script("layer_costs")
    cases = [module.conv_methods(3, *c, device="cpu") for c in [(4, 6, 8, 3, 1, 1), (4, 6, 8, 3, 2, 1),
                                                                (4, 4, 6, 3, 1, 4), (6, 8, 5, 1, 1, 2)]]
    cases.append(module.linear_methods(3, 4, 5, 6, device="cpu"))
    for site, rule, methods, label in cases:
        norms = {name: fn()[0] for name, fn in methods.items() if name != "ghost"}
        for name, got in norms.items():
            torch.testing.assert_close(got, norms["ps_unfold"], rtol=1e-4, atol=1e-6, msg=f"{label} {name}")
        torch.testing.assert_close(methods["ghost"]()[0], norms["ps_unfold"], rtol=1e-3, atol=1e-5)
        assert ("ps_shifted" in methods) == (site.rule == "conv" and site.consts["stride"] == [1, 1]), label
        for policy in ("mixed", "auto"):
            assert module.pick(policy, site, rule) in methods, (label, policy)


def test_peak_memory_replay_finds_the_peak_and_what_is_live_then():
    """benchmarks/peak_memory.py's replay of an allocator trace (the GPU's; here a short one written out): the
    peak of allocated bytes, first reached, the blocks live at that moment, largest first, the alloc that reached it
    and the share of the step's allocs made by then."""
    module = load_script("peak_memory")
    events = [{"action": "segment_alloc", "addr": 0, "size": 1 << 30},
              {"action": "alloc", "addr": 1, "size": 100}, {"action": "alloc", "addr": 2, "size": 300},
              {"action": "free_requested", "addr": 1, "size": 100}, {"action": "free_completed", "addr": 1, "size": 100},
              {"action": "alloc", "addr": 3, "size": 50}, {"action": "alloc", "addr": 4, "size": 60},
              {"action": "free_requested", "addr": 3, "size": 50}, {"action": "alloc", "addr": 5, "size": 40},
              {"action": "free_requested", "addr": 99, "size": 7}]
    peak, live, reached, when = module.peak_live(events)
    assert peak == 410 and [e["addr"] for e in live] == [2, 4, 3]
    assert reached["addr"] == 4 and when == 4 / 5  # the fourth of five allocs
    assert module.peak_live([])[2:] == ({}, 0)
    frames = [{"filename": "/x/torch/nn/modules/module.py", "line": 1}, {"filename": "/w/examples/models.py", "line": 2}]
    assert module.origin(frames).startswith("models.py:2")
    # a trace with C++ frames ("??" without symbols) first, and inductor's code in a cache directory set by the run
    frames = [{"filename": "??", "line": 0}, {"filename": "/x/torch/_inductor/utils.py", "line": 3},
              {"filename": "/tmp/c-run/ab/cab12.py", "line": 4}, {"filename": "/w/examples/models.py", "line": 2}]
    assert module.origin(frames, "/tmp/c-run").startswith("cab12.py:4")
    assert module.origin(frames).startswith("cab12.py:4")  # the first Python frame outside torch
    assert module.origin(frames[:2]).startswith("??:0")  # no Python frame outside torch: the first frame


@pytest.mark.slow
def test_with_plan_sets_the_plans_constants_for_the_script_it_runs(tmp_path):
    """benchmarks/with_plan.py: the script runs as __main__ with its own arguments and sees the plan's and the rules'
    constants as set; a name none of them has is refused, not silently ignored."""
    import subprocess
    script = tmp_path / "show.py"
    script.write_text("import sys\nfrom dpcompile.passes import plan\nfrom dpcompile.passes.rules import bounds, conv\n"
                      "print(conv.SHIFTED_CONV_MAX_PRODUCTS, conv.SHIFTED_CONV_MIN_CHANNELS, plan.NEAR_TIE, "
                      "bounds.HALF_GRAM_DEVICES, sys.argv[1:])\n")
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "benchmarks" / "with_plan.py"), *args],  # noqa: E731
                                       capture_output=True, text=True, cwd=ROOT)
    done = run("SHIFTED_CONV_MAX_PRODUCTS=0", "SHIFTED_CONV_MIN_CHANNELS=7", "NEAR_TIE=0.5",
               "HALF_GRAM_DEVICES=('cuda',)", "--", str(script), "--x", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "0 7 0.5 ('cuda',) ['--x', '1']"
    refused = run("SHIFTED_CONV_MAX_PRODUCT=0", "--", str(script))
    assert refused.returncode != 0 and "SHIFTED_CONV_MAX_PRODUCT" in refused.stderr


def test_live_memory_counts_a_view_as_its_base_and_finds_the_bytes_per_sample():
    """benchmarks/live_memory.py's walk over a graph with a symbolic batch: a view allocates nothing and keeps its
    base alive until the view's own last use; an input is freed after its last use. Counting the view as new memory
    (a fourth value at the peak) or freeing its base at the view (two) both fail here. With fuse, a cast and a product
    that only feed a sum are never written. On the smoke config the DP backward adds at least as much per sample as
    the non-private one."""
    from torch.fx.experimental.proxy_tensor import make_fx
    module = load_script("live_memory")

    def f(x):
        a = x * 2
        v = a.view(-1)  # nothing new; a stays alive until v's view below is used
        b = x + 1  # x's last use: x, a, b live (the peak)
        return (v.view_as(b) * b).sum()
    gm = make_fx(f, tracing_mode="symbolic")(torch.randn(5))  # one symbolic size, as a backward's batch
    for batch in (10, 20):
        peak, where, live = module.graph_peak(gm, batch)
        assert peak == 3 * batch * 4 and where.startswith("add"), (batch, peak, where)
        assert sorted(b for _, b in live) == [batch * 4] * 3
    cast = make_fx(lambda x: (x.double() * 2).sum(), tracing_mode="symbolic")(torch.randn(5))
    assert module.graph_peak(cast, 10)[0] == 160  # the float64 copy and its double, written: 80 + 80 bytes
    assert module.graph_peak(cast, 10, fuse=True)[0] == 48  # fused into the sum: x (40) and the scalar (8)
    result = module.measure("smoke", "auto", 100, 3)
    assert result["dp"]["mb_per_sample"] >= result["non_private"]["mb_per_sample"] > 0
    assert 0 < result["largest_batch_ratio_estimate"] <= 1


def test_device_call_helpers_cap_log_and_keep(tmp_path):
    """benchmarks/device_call.sh, which one-off device call scripts source: run logs a command and keeps its result
    line without the per-product list (a non-JSON last line says so), skips a command once less than half of its
    cap is left of LIMIT, keep copies only the generated modules with DP nodes written since the last mark, and
    summary prints a line per result (none for a non-JSON one), suite runs a config's compile and `auto` from caches
    of their own, and gpu_tests hands .ci/gpu its files, -k expression, workers and limits (capped by what is left
    of LIMIT) and prints only its result lines, and launches reads a profiled log's launches a step. Run here in a
    folder whose .ci/gpu-wheels, .ci/gpu and benchmarks/dp_throughput.py are stubs (the call's installs do nothing;
    the others echo what they got)."""
    import subprocess
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "gpu-wheels").write_text("echo wheels\n")
    (tmp_path / ".ci" / "gpu").write_text('echo "setup line"; echo "PASSED $1 $TESTS|$PYTEST_ADDOPTS|$WORKERS|'
                                          '$TEST_TIMEOUT|$LIMIT|$OUT"\n')
    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir(), out.mkdir()
    (cache / "before.py").write_text("x" * 30_000 + "\n# dp_norm_sq\n")
    (tmp_path / "benchmarks").mkdir()  # suite's runs: a dp_throughput.py that reports its arguments and cache
    (tmp_path / "benchmarks" / "dp_throughput.py").write_text(
        "import json, os, sys; print(json.dumps({'args': sys.argv[1:], 'cache': os.environ['TORCHINDUCTOR_CACHE_DIR']}))")
    script = f"""
PREFIX=t-call; OUT={out}; LIMIT=20
source {ROOT / "benchmarks" / "device_call.sh"}
export TORCHINDUCTOR_CACHE_DIR={cache}
run "a b" 10 python3 -c 'import json; print("log"); print(json.dumps({{"step_ms": 1.5, "products": [1]}}))'
run "no json" 10 python3 -c 'print("done")'
run "too long" 100 sleep 1
python3 -c 'print("y" * 30000 + "\\n# dp_per_sample")' > {cache}/after.py
python3 -c 'print("z" * 30000)' > {cache}/other.py
keep kept
summary
(LIMIT=200; suite bf16 wrn 32 8 10) > /dev/null  # its compile run caps at 80 s: LIMIT 20 would skip it
printf '    cuLaunchKernel   9.04%%   24.663ms   12.845us   1920\n' > {out}/t-call-profiled.log
launches "prof*" > {out}/launches.txt
gpu_tests "tests/a.py tests/b.py" "x or (y and z)" 3 500
"""
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True,
                          timeout=120)
    *_, summary, tests = done.stdout.splitlines()
    assert summary == "None None graphs None step 1.5 host None device None first None amp None peak None"
    left = int(tests.split("|")[-2])  # LIMIT=20 less the seconds the runs above took
    assert 0 < left <= 20 and tests == (f"PASSED inductor tests/a.py tests/b.py|-k 'x or (y and z)'|3|{left - 10}|"
                                        f"{left}|{out}/tests")
    lines = (out / "t-call.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step_ms": 1.5} and lines[1].startswith("no json") and len(lines) == 4
    common = ["--profile", "--amp", "bf16", "--model", "wrn", "--size", "32", "--batch", "8"]
    assert json.loads(lines[2]) == {"args": common + ["--method", "compile"], "cache": "/tmp/c-bf16-wrn-32-np"}
    assert json.loads(lines[3]) == {"args": common + ["--policy", "auto"], "cache": "/tmp/c-bf16-wrn-32-dp"}
    assert (out / "t-call-a_b.log").read_text().startswith("log")
    assert not (out / "t-call-too_long.log").exists()
    assert sorted(p.name for p in (out / "kept").iterdir()) == ["after.py.gz"]
    assert (out / "launches.txt").read_text() == "t-call-profiled.log: 384 cuLaunchKernel a step\n"
