"""GPU check: training throughput before and after the speed switches, and decoding against SD-VAE.

    python benchmarks/gpu_check.py [--budget-s 430] [--out gpu_check.json] [--parts convs,train,profile,decode,engine]
                                   [--presets eps-lite-B,eps-sd-M] [--variants before,after,after+r1/4]
                                   [--decode-batches 16,1]
    python benchmarks/gpu_check.py --smoke          # the same code paths, tiny, on the CPU

torch.compile takes 2.5-3 minutes per training configuration on an H200 (2026-11-28), so
the whole check needs two or three calls within a 15-minute lease; choose presets, variants
and compiled decoding batches to fit (docs/gpu_check.md lists what is still unmeasured).
Pipe the output through nothing that buffers (`| tee`, not `| grep`): a call stopped at its
time limit loses a buffered pipe's output.
Parts:
1. the card: its name, a measured bf16 matmul rate (8192^3) and the datasheet's dense peak;
2. training: the engine's step (`autoencoder_loss`, `discriminator_loss` with lazy R1, Adam,
   bf16 autocast; the perceptual term is an LPIPS-shaped stand-in, torchvision's VGG16
   with random weights: its cost does not depend on the weights) for eps-lite-B @128
   (batch 64) and eps-sd-M @256 (batch 16), in variants: `before` (eager, NCHW, plain
   Adam: the step before the switches), `after` (the CUDA defaults of `epsvae train`:
   encoder, decoder and perceptual network compiled, channels-last, fused Adam, TF32)
   and `after+r1/4` (plus `train.loss.r1_subsample=4`). Reported: images/s with the
   recipe's lazy R1, images/s and achieved TFLOP/s without R1 (FLOPs of one eager step
   counted by torch.utils.flop_counter; R1's double backward defeats the counter), the
   fraction of the measured matmul rate, peak memory, and the compile/warm-up seconds;
3. a profile of each preset's `after` step: device time by kernel family and the top kernels;
4. decoding: eps-sd-B at one and three steps against diffusers' SD-VAE decoder (AutoencoderKL
   in Stable Diffusion's configuration, random weights: speed does not depend on them),
   256 and 512 px, batch 16 and 1, eager and compiled, bf16 autocast;
5. the engine on CUDA: a short `train()` with the CUDA defaults and two micro-batches;
6. `convs` (runs first when asked for): the step's heaviest convolution shapes, found by a forward hook
   on one eager step, each timed alone (forward + backward, bf16, channels-last) with cuDNN's autotuning
   off and on, and the kernel cuDNN ran: the ceiling of the step's convolutions on this card.
Parts run in that order while the budget lasts; what does not fit is recorded as skipped,
and a part that fails is recorded with its error. The JSON is rewritten after every part.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from epsvae.config import TrainConfig  # noqa: E402
from epsvae.losses import autoencoder_loss, discriminator_loss  # noqa: E402
from epsvae.models import EpsilonVAE, build_discriminator  # noqa: E402

DATASHEET_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
DEVICE = "cuda"
NO_COMPILE = False
VARIANTS = {  # name -> (compile, channels_last, fused Adam, R1 sub-sampling, cudnn.benchmark)
    "before": (False, False, False, 1, False),
    "after": (True, True, True, 1, False),
    "after+r1/4": (True, True, True, 4, False),
    "after+cudnn-bench": (True, True, True, 1, True),  # measured on an H200 (2026-12-04): slower, not a default
    # why the compiled step runs Ampere "indexed" cuDNN kernels where the same shapes alone run Hopper ones
    # (docs/gpu_check.md, 2026-12-04): the switches without compiling, and compiled without two of inductor's
    # layout decisions (each compiles afresh)
    "eager-channels-last": (False, True, True, 1, False),
    "after+no-padding": (True, True, True, 1, False),
    "after+no-layout-opt": (True, True, True, 1, False),
}
INDUCTOR = {  # variant -> torch._inductor.config values it compiles with (the others: inductor's defaults)
    "after+no-padding": {"comprehensive_padding": False},
    "after+no-layout-opt": {"layout_optimization": False},
}


def tflops(flops: float, seconds: float) -> float:
    """TFLOP/s to 4 significant digits (a slow CPU's smoke rates are far below 0.01)."""
    return float(f"{flops / seconds / 1e12:.4g}")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else torch.autocast("cpu", enabled=False)


class VGGStandIn(torch.nn.Module):
    """LPIPS-shaped distance over VGG16's five feature slices (random weights: cost only)."""

    def __init__(self):
        super().__init__()
        import torchvision

        feats = torchvision.models.vgg16().features
        cuts = [0, 4, 9, 16, 23, 30]
        self.slices = torch.nn.ModuleList(feats[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True))
        self.requires_grad_(False)

    def forward(self, x, y):
        if x.shape[1] == 1:  # grayscale presets (the CPU smoke test), as LPIPS does
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        d = 0
        for s in self.slices:
            x, y = s(x), s(y)
            nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = d + (nx - ny).pow(2).sum(1).mean((1, 2))
        return d


INDUCTOR_DEFAULTS: dict = {}


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _nonzero(module: torch.nn.Module) -> None:
    for p in module.parameters():  # zero-initialised output layers, as at step 0, would make steps trivial
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)


# --------------------------------------------------------------------------- training


def train_setup(preset: str, batch: int, variant: str, smoke: bool):
    """(step function, model) for one preset and variant; step(r1: bool) runs one training step."""
    compiled, channels_last, fused, r1_sub, bench = VARIANTS[variant]
    torch.backends.cudnn.benchmark = bench  # autotune each convolution shape (timed after the warm-up)
    compiled = compiled and not NO_COMPILE
    if compiled:
        import torch._inductor.config as inductor_config

        for key in {k for v in INDUCTOR.values() for k in v}:  # compiling happens at the first step, with these
            INDUCTOR_DEFAULTS.setdefault(key, getattr(inductor_config, key))
            setattr(inductor_config, key, INDUCTOR.get(variant, {}).get(key, INDUCTOR_DEFAULTS[key]))
    torch.manual_seed(0)
    overrides = ["image_channels=1", "image_size=32"] if smoke else []
    model = EpsilonVAE.from_preset(preset, overrides).to(DEVICE).train()
    _nonzero(model)
    disc = build_discriminator(model.config).to(DEVICE)
    try:
        perceptual = VGGStandIn().to(DEVICE)
    except ImportError:
        perceptual = None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (model, disc, perceptual):
        if m is not None:
            m.to(memory_format=fmt)
    if compiled:  # as `epsvae train` does on CUDA; the discriminator stays eager (R1 needs a double backward)
        # static shapes: the U-Net class's code was already compiled for another preset's shapes, and a
        # recompile would otherwise go dynamic (seen on an H200: slower to compile, and slower kernels)
        for m in (model.encoder, model.decoder, perceptual):
            if m is not None:
                m.compile(dynamic=False)
    lc = TrainConfig().loss
    lc.r1_subsample = r1_sub
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.999), fused=fused)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.0, 0.999), fused=fused)
    c, s = model.config.image_channels, model.config.image_size
    x = (torch.rand(batch, c, s, s, device=DEVICE) * 2 - 1).contiguous(memory_format=fmt)

    def step(r1: bool) -> None:
        with autocast():
            loss, _, out = autoencoder_loss(model, x, lc, perceptual, disc, adv_on=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        d_loss, _ = discriminator_loss(disc, x, out, lc, r1_step=r1, autocast=autocast)
        d_loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

    return step, model


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(False)
    return counter.get_total_flops()


def timed(step, seconds: float, r1_every: int | None) -> tuple[int, float]:
    """Steps run in about `seconds` (with R1 every `r1_every` steps, or never), and their wall time."""
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or (r1_every and n % r1_every) or n < 2:
        step(bool(r1_every) and n % r1_every == 0)
        n += 1
    sync()
    return n, time.perf_counter() - t0


def train_bench(preset: str, batch: int, variant: str, seconds: float, flops: float | None, smoke: bool) -> dict:
    step, model = train_setup(preset, batch, variant, smoke)
    t0 = time.perf_counter()
    for i in range(3):  # compiles (forward, backward, the R1 path) and warms up
        step(r1=i == 0)
    sync()
    warmup = time.perf_counter() - t0
    if flops is None:  # counted on an eager step: the counter does not see inside compiled graphs
        flops = count_flops(train_setup(preset, batch, "before", smoke)[0] if VARIANTS[variant][0] else step)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_plain, dt_plain = timed(step, seconds / 2, None)
    n, dt = timed(step, seconds / 2, 4)
    return {
        "preset": preset,
        "variant": variant,
        "resolution": model.config.image_size,
        "batch": batch,
        "warmup_seconds": round(warmup, 1),
        "images_per_s": round(n * batch / dt, 1),
        "images_per_s_without_r1": round(n_plain * batch / dt_plain, 1),
        "flops_per_step": flops,
        "tflops": tflops(flops * n_plain, dt_plain),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None,
        "_step": step,
    }


KERNEL_FAMILIES = [  # (family, pattern on the CUDA kernel's name), first match wins
    ("attention", r"flash|fmha|attention|sdpa"),
    ("conv / matmul", r"conv|gemm|cutlass|sm90|xmma|wgmma|cudnn|implicit|dgrad|wgrad"),
    ("norm", r"norm"),
    ("compiled (triton)", r"triton"),
    ("reduction", r"reduce|sum"),
    ("copy / layout", r"copy|transpose|memcpy|nchw|nhwc|permute"),
    ("elementwise", r"elementwise|vectorized|unrolled|fill"),
]


def profile_step(step, steps: int = 4) -> dict:
    """Device time by kernel family and the top kernels over `steps` training steps (R1 on the first);
    on the CPU (the smoke test) the same from the CPU operators' own time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = DEVICE == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(r1=i == 0)
        sync()
    own = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)  # noqa: E731
    events = [e for e in prof.key_averages() if own(e) > 0]
    total = sum(own(e) for e in events) or 1.0
    families: dict[str, float] = {}
    for e in events:
        fam = next((f for f, pat in KERNEL_FAMILIES if re.search(pat, e.key, re.I)), "other")
        families[fam] = families.get(fam, 0.0) + own(e)
    top = sorted(events, key=lambda e: -own(e))[:15]
    return {
        "convolutions_by_shape": conv_calls_by_shape(step, steps),
        "steps": steps,
        "device_ms_per_step": round(total / 1000 / steps, 2),
        "families_percent": {k: round(100 * v / total, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": e.key[:120], "percent": round(100 * own(e) / total, 1), "calls": e.count} for e in top
        ],
    }


# --------------------------------------------------------------------------- convolutions alone


def step_convs(step, model: torch.nn.Module) -> dict[tuple, dict]:
    """The Conv2d calls of one training step (no R1), by shape: {key: {"calls", "flops", "first"}} with forward
    FLOPs and the first module of that shape (the autoencoder's by name; else the discriminator or VGG)."""
    seen: dict[tuple, dict] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and isinstance(inputs[0], torch.Tensor):
            n, c, h, w = inputs[0].shape
            key = (n, c, h, w, module.out_channels, module.kernel_size, module.stride, module.padding,
                   module.dilation, module.groups)  # fmt: skip
            flops = 2 * output.numel() * (c // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            first = names.get(id(module), "discriminator or perceptual")
            row = seen.setdefault(key, {"calls": 0, "flops": 0, "first": first})
            row["calls"] += 1
            row["flops"] += flops

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        step(False)
    finally:
        handle.remove()
    return seen


def conv_alone(key: tuple, bench: bool, reps: int) -> dict:
    """One convolution shape alone, forward + backward (input and weight gradients), bf16, channels-last:
    TFLOP/s (3x the forward FLOPs) and the kernel that took most of the device time."""
    n, c, h, w, co, k, stride, pad, dil, groups = key
    torch.backends.cudnn.benchmark = bench
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    conv = torch.nn.Conv2d(c, co, k, stride, pad, dil, groups, bias=True).to(DEVICE, dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def once():
        y = conv(x)
        y.backward(torch.ones_like(y))

    for _ in range(3):  # autotuning (when on) happens here
        once()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    sync()
    dt = (time.perf_counter() - t) / reps
    y = conv(x)
    flops = 3 * 2 * y.numel() * (c // groups) * k[0] * k[1]
    kernel = None
    if DEVICE == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            once()
            sync()
        events = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                        key=lambda e: -e.self_device_time_total)  # fmt: skip
        kernel = [e.key[:100] for e in events[:3]]
    return {"tflops": tflops(flops, dt), "ms": round(dt * 1e3, 3), "kernels": kernel}


def convs_check(preset: str, batch: int, smoke: bool, top: int = 8) -> dict:
    """The step's heaviest convolution shapes, each timed alone with cuDNN autotuning off and on: how fast
    the convolutions that take most of the step can run on this card, apart from the rest of the step."""
    step, model = train_setup(preset, batch, "before", smoke)
    shapes = step_convs(step, model)
    total = sum(r["flops"] for r in shapes.values()) or 1
    rows = []
    for key, r in sorted(shapes.items(), key=lambda kv: -kv[1]["flops"])[:top]:
        n, c, h, w, co, k, stride, *_rest, groups = key
        row = {"input": [n, c, h, w], "out_channels": co, "kernel": list(k), "stride": list(stride),
               "groups": groups, "calls_per_step": r["calls"], "first_module": r["first"],
               "share_of_conv_flops": round(r["flops"] / total, 3)}  # fmt: skip
        for bench in (False, True):
            row["cudnn_benchmark" if bench else "default"] = conv_alone(key, bench, 3 if smoke else 20)
        rows.append(row)
    torch.backends.cudnn.benchmark = False
    covered = sum(r["share_of_conv_flops"] for r in rows)
    return {"preset": preset, "batch": batch, "conv_shapes": len(shapes),
            "forward_conv_flops_per_step": total, "top_shapes_share": round(covered, 3), "shapes": rows}  # fmt: skip


def conv_calls_by_shape(step, steps: int, top: int = 12) -> list[dict]:
    """The step's convolution calls grouped by (input, weight) shape, heaviest first: device milliseconds per
    step of their forward and backward (the kernels each aten call launched), to set beside `convs`, which
    times the same shapes alone. Says which layers the slow kernels of the profile belong to. A profile of
    its own (CPU operators with shapes, plus their kernels), apart from the kernel-only one above."""
    from torch.profiler import ProfilerActivity, profile

    cuda = DEVICE == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(steps):
            step(r1=i == 0)
        sync()
    total = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)  # noqa: E731
    rows: dict[tuple, dict] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key not in ("aten::convolution", "aten::convolution_backward") or not e.input_shapes:
            continue
        shapes = e.input_shapes
        # forward: (input, weight, bias, ...); backward: (grad_output, input, weight, ...)
        x, w = (shapes[0], shapes[1]) if e.key == "aten::convolution" else (shapes[1], shapes[2])
        if len(x) != 4 or len(w) != 4:
            continue
        empty = {"forward_calls": 0, "forward_ms": 0.0, "backward_calls": 0, "backward_ms": 0.0}
        row = rows.setdefault((tuple(x), tuple(w)), {"input": list(x), "weight": list(w), **empty})
        kind = "forward" if e.key == "aten::convolution" else "backward"
        row[f"{kind}_calls"] += e.count
        row[f"{kind}_ms"] += total(e) / 1000
    out = []
    for row in rows.values():
        for k in ("forward_calls", "backward_calls"):
            row[k] = round(row[k] / steps, 2)
        for k in ("forward_ms", "backward_ms"):
            row[k] = round(row[k] / steps, 3)
        out.append(row)
    return sorted(out, key=lambda r: -(r["forward_ms"] + r["backward_ms"]))[:top]


# --------------------------------------------------------------------------- decoding


def sd_vae_decoder():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
    )  # fmt: skip
    vae.encoder = None  # decoding only
    return vae.to(DEVICE).eval()


def decode_rows(arms, resolutions, batches, compiled: bool, seconds: float) -> list[dict]:
    """images/s of each decoder at each (resolution, batch); compiled ones compile per shape, statically."""
    rows = []
    for name, make, steps_list in arms:
        module, fn = make()
        if compiled:
            module.compile(dynamic=False)
        for res in resolutions:
            for batch in batches:
                z = torch.randn(batch, 4, res // 8, res // 8, device=DEVICE)
                for steps in steps_list:
                    with torch.no_grad(), autocast():
                        t0 = time.perf_counter()
                        fn(z, steps)
                        fn(z, steps)
                        sync()
                        warm = time.perf_counter() - t0
                        times, start = [], time.perf_counter()
                        while not times or (time.perf_counter() - start < seconds and len(times) < 200):
                            t = time.perf_counter()
                            fn(z, steps)
                            sync()
                            times.append(time.perf_counter() - t)
                    median = sorted(times)[len(times) // 2]
                    rows.append({"decoder": name if steps is None else f"{name} {steps}-step", "resolution": res,
                                 "batch": batch, "compiled": compiled, "images_per_s": round(batch / median, 2),
                                 "warmup_seconds": round(warm, 1), "batches_timed": len(times)})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
        del module, fn
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def decoder_arms(smoke: bool):
    def eps():
        model = EpsilonVAE.from_preset("eps-sd-B", ["image_size=64"] if smoke else None).eval()
        _nonzero(model)
        model.encoder = torch.nn.Identity()
        model.to(DEVICE)
        g = torch.Generator(device=DEVICE)
        return model.decoder, lambda z, steps: model.decode(z, steps=steps, generator=g.manual_seed(0))

    def sd():
        vae = sd_vae_decoder()
        return vae.decoder, lambda z, _steps: vae.decode(z).sample

    arms = [("eps-sd-B", eps, [1, 3])]
    try:
        import diffusers  # noqa: F401

        arms.insert(0, ("sd-vae", sd, [None]))
    except ImportError:
        print("[gpu_check] diffusers is missing: no SD-VAE arm (pip install diffusers)", flush=True)
    return arms


# --------------------------------------------------------------------------- the engine


def engine_check(smoke: bool) -> dict:
    """A short real run through Accelerate on skimage-photos crops with the CUDA defaults and 2 micro-batches."""
    from epsvae.presets import run_config
    from epsvae.train import train

    cfg = run_config("eps-fmnist")
    cfg.model.image_channels = 3  # the photos are RGB
    tc = cfg.train
    tc.data, tc.steps, tc.batch_size, tc.micro_batch_size = "skimage-photos", 6, 8, 4
    tc.loss.perceptual, tc.loss.disc_start, tc.log_every, tc.eval_every = "none", 2, 3, 0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = train(d, cfg, progress=False)
        stats = [json.loads(line) for line in (Path(d) / "stats.jsonl").read_text().splitlines()]
        exported = (Path(d) / "model" / "model.safetensors").is_file()
    return {"seconds": round(time.perf_counter() - t0, 1), "summary": summary, "last_stats": stats[-1],
            "exported": exported, "compile": tc.compile, "channels_last": tc.channels_last}  # fmt: skip


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=430, help="stop starting new parts after this many seconds")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--parts", default="convs,train,profile,decode,engine")
    ap.add_argument("--presets", default="eps-lite-B,eps-sd-M", help="training presets, in this order")
    ap.add_argument(
        "--variants", default="before,after,after+r1/4", help=f"training variants, of {', '.join(VARIANTS)}"
    )
    ap.add_argument("--profile-variants", default="after", help="variants whose step is profiled (part profile)")
    ap.add_argument("--decode-batches", default="16,1", help="batches for compiled decoding")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test of this script on tiny settings")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out of every variant")
    args = ap.parse_args()
    global DEVICE, NO_COMPILE
    NO_COMPILE = args.no_compile
    if args.smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (or --smoke for a CPU smoke test)")
    start = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - start)  # noqa: E731
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in DATASHEET_BF16_DENSE.items() if k in name), None)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "perceptual": "VGG16 features, random weights (LPIPS-shaped cost)",
        "matmul_bf16_tflops_measured": float(f"{matmul_tflops(256 if args.smoke else 8192) / 1e12:.4g}"),
        "datasheet_bf16_dense_tflops": peak / 1e12 if peak else None,
        "train": [],
        "decode": [],
        "skipped": [],
        "errors": [],
    }
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    def part(label: str, needs_s: float, fn) -> object:
        if left() < needs_s:
            result["skipped"].append(f"{label} (needs ~{needs_s:.0f} s, {left():.0f} s left)")
            print(f"[gpu_check] skipped {label}", flush=True)
            return None
        try:
            t0 = time.perf_counter()
            value = fn()
            print(f"[gpu_check] {label}: {time.perf_counter() - t0:.0f} s", flush=True)
            return value
        except Exception as exc:  # one failing part must not lose the others
            result["errors"].append({"part": label, "error": f"{type(exc).__name__}: {exc}",
                                     "trace": traceback.format_exc()[-3000:]})  # fmt: skip
            print(f"[gpu_check] {label} failed: {type(exc).__name__}: {exc}", flush=True)
            return None
        finally:
            save()
            if DEVICE == "cuda":
                torch.cuda.empty_cache()

    parts = set(args.parts.split(","))
    batches = {"eps-lite-B": 64, "eps-sd-M": 16}
    plan = [("eps-fmnist", 4)] if args.smoke else [(p, batches[p]) for p in args.presets.split(",")]
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    unknown = set(args.variants.split(",") + args.profile_variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    profiled = set(args.profile_variants.split(","))
    seconds = 0.5 if args.smoke else 8.0
    for preset, batch in plan if "convs" in parts else ():
        result[f"convs_{preset}"] = part(f"convs {preset}", 40, lambda p=preset, b=batch: convs_check(p, b, args.smoke))
        save()  # part() saved before the assignment
    for preset, batch in plan if "train" in parts else ():
        flops = None
        torch._dynamo.reset()  # each preset compiles afresh, with static shapes
        compiled_once, compiled_with = False, {}
        for variant in variants:
            run = lambda p=preset, b=batch, v=variant, f=flops: train_bench(p, b, v, seconds, f, args.smoke)  # noqa: E731
            # the first compiled variant of a preset compiles (about 3 minutes on an H200); the next reuses it,
            # unless it compiles with other inductor settings, which start afresh
            if VARIANTS[variant][0] and compiled_once and compiled_with != INDUCTOR.get(variant, {}):
                torch._dynamo.reset()
                compiled_once = False
            compiles = VARIANTS[variant][0] and not compiled_once
            if compiles:
                compiled_with = INDUCTOR.get(variant, {})
            compiled_once = compiled_once or VARIANTS[variant][0]
            r = part(f"train {preset} {variant}", 200 if compiles else 30, run)
            if r is None:
                continue
            flops = r["flops_per_step"]
            step = r.pop("_step")
            r["fraction_of_measured_matmul"] = round(r["tflops"] / result["matmul_bf16_tflops_measured"], 3)
            r["fraction_of_datasheet"] = round(r["tflops"] * 1e12 / peak, 3) if peak else None
            result["train"].append(r)
            save()
            if variant in profiled and "profile" in parts:  # profile the step just compiled, while it exists
                result[f"profile_{preset}_{variant}"] = part(
                    f"profile {preset} {variant}", 20, lambda s=step: profile_step(s)
                )
                save()  # part() saved before the assignment
            del step
    if "decode" in parts:
        res = [64] if args.smoke else [256, 512]
        dsec = 0.2 if args.smoke else 2.0
        compiled_batches = [] if NO_COMPILE else [int(b) for b in args.decode_batches.split(",") if b]
        plan_d = ((False, [16, 1], 40),) + tuple((True, [b], 170) for b in compiled_batches)
        for compiled, batches, needs in plan_d:
            run = lambda c=compiled, b=batches: decode_rows(decoder_arms(args.smoke), res, b, c, dsec)  # noqa: E731
            rows = part(f"decode compiled={compiled} batch {batches}", needs, run)
            result["decode"] += rows or []
    if "engine" in parts:
        result["engine_check"] = part("engine", 60, lambda: engine_check(args.smoke))
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    save()
    print_tables(result)


def print_tables(result: dict) -> None:
    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}; perceptual: {result['perceptual']}")
    print(f"measured bf16 matmul: {result['matmul_bf16_tflops_measured']} TFLOP/s")
    print(f"{'preset':<12}{'variant':<12}{'res':>5}{'batch':>6}{'img/s':>9}{'no R1':>9}{'TFLOP/s':>9}"
          f"{'of matmul':>10}{'peak GiB':>9}{'warm s':>8}")  # fmt: skip
    for r in result["train"]:
        print(f"{r['preset']:<12}{r['variant']:<12}{r['resolution']:>5}{r['batch']:>6}{r['images_per_s']:>9}"
              f"{r['images_per_s_without_r1']:>9}{r['tflops']:>9}{r['fraction_of_measured_matmul']:>10}"
              f"{str(r['peak_memory_gib']):>9}{r['warmup_seconds']:>8}")  # fmt: skip
    for key in [k for k in result if k.startswith("profile_") and result[k]]:
        prof = result[key]
        print(f"{key} ({prof['device_ms_per_step']} ms/step on the device): {prof['families_percent']}")
    for key in [k for k in result if k.startswith("profile_") and result[k]]:
        print(f"{key}: convolutions in the step by shape, ms per step (forward / backward, calls):")
        for r in result[key].get("convolutions_by_shape", []):
            print(f"  {str(r['input']):<22} w{str(r['weight']):<20} {r['forward_ms']:>8} / {r['backward_ms']:<8}"
                  f" ({r['forward_calls']} / {r['backward_calls']})")  # fmt: skip
    for key in [k for k in result if k.startswith("convs_") and result[k]]:
        cv = result[key]
        print(f"{key}: {cv['conv_shapes']} shapes, the {len(cv['shapes'])} heaviest = {cv['top_shapes_share']:.0%}"
              " of the forward conv FLOPs; each alone, fwd+bwd TFLOP/s (default / cudnn.benchmark):")  # fmt: skip
        for r in cv["shapes"]:
            d, b = r["default"], r["cudnn_benchmark"]
            print(f"  {str(r['input']):<22} -> {r['out_channels']:>4} k{r['kernel'][0]} s{r['stride'][0]}"
                  f" x{r['calls_per_step']:<3} {r['share_of_conv_flops']:>6.1%}  {d['tflops']:>7} / {b['tflops']:<7}"
                  f" {r['first_module'][:40]:<40} {(d['kernels'] or ['-'])[0][:50]}")  # fmt: skip
    rows = result["decode"]
    if rows:
        print(f"{'decoder':<18}{'res':>5}{'batch':>6}{'compiled':>9}{'img/s':>10}{'vs SD-VAE':>10}")
    for r in rows:
        base = next((b for b in rows if b["decoder"] == "sd-vae" and b["resolution"] == r["resolution"]
                     and b["batch"] == r["batch"] and b["compiled"] == r["compiled"]), None)  # fmt: skip
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        print(f"{r['decoder']:<18}{r['resolution']:>5}{r['batch']:>6}{str(r['compiled']):>9}"
              f"{r['images_per_s']:>10}{ratio:>10}")  # fmt: skip
    e = result.get("engine_check")
    if e:
        s = e["summary"]
        print(f"engine: {s['step']} steps, {s['mixed_precision']}, accumulation {s['accumulation_steps']}, "
              f"exported={e['exported']}, {e['seconds']} s, last loss {e['last_stats'].get('loss')}")  # fmt: skip
    for err in result["errors"]:
        print(f"ERROR in {err['part']}: {err['error']}")
    for s in result["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
