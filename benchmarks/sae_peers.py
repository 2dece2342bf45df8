"""lfp's SAEs beside SAELens's TopK at equal sparsity: fidelity (held-out FVU), L0, speed, ratios.

Same activations, same k, same batch (32), epochs (1), learning rate, one torch thread each, on
real cached activations of the offline default's tiny model (d_model 64; data/activations, if the
pipeline has run) and on synthetic 512-wide rows with planted sparse structure (sae_train.py's).
rows/s: best of 2 interleaved runs (1 with --quick), wall clock; the CPU-time ratio in
parentheses is robust to a shared CPU. Rows:
  lfp relu_l1   the paper method (tied ReLU + l1 = sae.l1), for reference;
  lfp topk      `train_sae` with `SaeTraining(architecture="topk", k=k)` and its defaults (untied, unit-norm
                decoder at lr·√(512/d_in), AuxK α = 1/32 over latents dead for 10k rows);
  SAELens topk  `sae_lens.SAETrainer` on a `TopKTrainingSAE` with SAELens's defaults (Adam betas
                0.9/0.999, grad-norm clip 1, AuxK 1.0 over latents dead for 1000 steps, b_dec
                subtracted from the input, decoder-norm rescaling, decoder init norm 0.1), fed the
                same batches in the same order.
Ratios: fvu_ratio = lfp topk FVU / SAELens topk FVU (goal ≤ 1 ± noise), speed_ratio = lfp topk
rows/s / SAELens rows/s (goal ≥ 3). Also: an lfp TopK SAE saved with `save_sae` is loaded with
`sae_lens.SAE.load_from_disk` and its codes compared, and the GEMM backend chosen for the
d_model-512 relu_l1 SAEs (lfp.sae.backend) is timed against both forced paths (goal ≥ 0.95x
the faster).

Needs `sae-lens` (installed only in the bench venv by `make bench`, never a runtime dependency):
`.venv-bench/bin/python benchmarks/sae_peers.py [--quick]` (`--smoke`: every code path in seconds on
1,000 synthetic 64-wide rows, for tests/test_benchmarks.py; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("WANDB_MODE", "disabled")

from sae_train import synthetic_activations

from lfp.sae import backend as gemm
from lfp.sae import SaeTraining, load_sae, save_sae, train_sae

REAL = HERE.parent / "data/activations/tiny-vader/finetuned/layer3.npy"
LR, BATCH, SEED, L1 = 1e-3, 32, 0, 1e-3
# (data, d_hidden, k): the k of the issue's table (lfp relu_l1's L0 there), so rows compare
CASES = [("real", 64, 10), ("real", 128, 11), ("synthetic", 512, 69), ("synthetic", 1024, 92)]
SMOKE_D, SMOKE_CASES = 64, [("synthetic", 64, 8)]  # --smoke: below lfp.sae.backend's measuring size


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def datasets(quick: bool, smoke: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (train rows, held-out rows)."""
    if smoke:
        syn = synthetic_activations(1_500, SMOKE_D, seed=7)
        return {"synthetic": (syn[:1_000], syn[1_000:])}
    n_real, n_syn = (12_000, 4_000) if quick else (60_000, 20_000)
    out = {}
    if REAL.exists():
        acts = np.load(REAL, mmap_mode="r")
        out["real"] = (np.ascontiguousarray(acts[:n_real], dtype=np.float32),
                       np.ascontiguousarray(acts[-10_000:], dtype=np.float32))  # other texts
    else:
        print(f"(no {REAL}: run the pipeline's activations stage for the real-activation rows)")
    syn = synthetic_activations(n_syn + 5_000, 512, seed=7)
    out["synthetic"] = (syn[:n_syn], syn[n_syn:])
    return out


def quality(encode, decode, held: np.ndarray) -> dict[str, float]:
    x = torch.from_numpy(held)
    with torch.no_grad():
        codes = encode(x)
        x_hat = decode(codes)
    err = float((x_hat - x).double().pow(2).sum())
    var = float((x.double() - x.double().mean(0)).pow(2).sum())
    on = codes > 0
    return {"fvu": err / var, "l0": float(on.sum(1).float().mean()), "dead": float((~on.any(0)).float().mean())}


def batches(train: np.ndarray) -> list[torch.Tensor]:
    """The one epoch of batches both trainers see (a seeded shuffle)."""
    perm = np.random.default_rng(SEED).permutation(len(train))
    x = torch.from_numpy(train[perm])
    return [x[i : i + BATCH] for i in range(0, len(x) - BATCH + 1, BATCH)]  # full batches only


def run_lfp(train: np.ndarray, held: np.ndarray, h: int, **kw: Any) -> tuple[dict[str, float], Any]:
    t0, c0 = time.perf_counter(), time.thread_time()
    sae, _ = train_sae(train, h, SaeTraining(lr=LR, batch_size=BATCH, epochs=1, seed=SEED, **kw), threads=1)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    q = quality(sae.encode, sae.decode, held)
    return dict(q, rows_per_s=len(train) / wall, cpu_rows_per_s=len(train) / cpu), sae


def run_saelens(train: np.ndarray, held: np.ndarray, h: int, k: int) -> dict[str, float]:
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(SEED)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=h, k=k, device="cpu"))
    data = batches(train)
    fields = {f.name for f in dataclasses.fields(SAETrainerConfig)}
    cfg = {"n_checkpoints": 0, "checkpoint_path": None, "save_final_checkpoint": False,
               "total_training_samples": len(data) * BATCH, "device": "cpu", "autocast": False, "lr": LR, "lr_end": LR / 10,
               "lr_scheduler_name": "constant", "lr_warm_up_steps": 0, "adam_beta1": 0.9, "adam_beta2": 0.999, "lr_decay_steps": 0,
               "n_restart_cycles": 1, "train_batch_size_samples": BATCH, "dead_feature_window": 1000,
               "feature_sampling_window": 2000, "logger": LoggingConfig(log_to_wandb=False)}
    required = {f.name for f in dataclasses.fields(SAETrainerConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(cfg)
    if missing:
        raise RuntimeError(f"this sae-lens's SAETrainerConfig also needs {sorted(missing)}: update benchmarks/sae_peers.py")
    trainer = SAETrainer(cfg=SAETrainerConfig(**{k_: v for k_, v in cfg.items() if k_ in fields}), sae=sae,
                         data_provider=iter(data))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as lfp's train_sae(threads=1)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            t0, c0 = time.perf_counter(), time.thread_time()
            trainer.fit()
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    finally:
        torch.set_num_threads(old_threads)
    sae.eval()
    q = quality(sae.encode, sae.decode, held)
    return dict(q, rows_per_s=len(data) * BATCH / wall, cpu_rows_per_s=len(data) * BATCH / cpu)


def saelens_loads(sae: Any, held: np.ndarray) -> float:
    """Max |code difference| between lfp's SAE and SAELens loading its saved directory."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        save_sae(sae, Path(tmp) / "s", {"bench": True})
        theirs = SAE.load_from_disk(str(Path(tmp) / "s"), device="cpu")
        assert torch.equal(load_sae(Path(tmp) / "s").encoder_weight, sae.encoder_weight)
        x = torch.from_numpy(held[:2000])
        with torch.no_grad():
            return float((theirs.encode(x) - sae.encode(x)).abs().max())


def backend_check(train: np.ndarray, quick: bool, smoke: bool = False) -> list[str]:
    """rows/s of relu_l1 training at 512x{512,1024} (smoke: 64x64) on each forced path and on the chosen one."""
    lines = []
    rows = train[: 500 if smoke else 4_000 if quick else 12_000]
    for h in (SMOKE_D,) if smoke else (512, 1024):
        probe = __import__("lfp.sae.model", fromlist=["SparseAutoencoder"]).SparseAutoencoder(rows.shape[1], h)
        with torch.no_grad():
            torch.set_num_threads(1)
            chosen = gemm.choose_backend(probe, BATCH)
        speed: dict[str, float] = {}
        for _ in range(2):  # interleaved, best of 2
            for b in ("mkl", "onednn"):
                try:
                    _, st = train_sae(rows, h, SaeTraining(l1=L1, lr=LR, batch_size=BATCH, epochs=1, seed=SEED), threads=1, backend=b)
                except ValueError:
                    continue
                speed[b] = max(speed.get(b, 0.0), st["rows_per_s"])
        best = max(speed.values())
        lines.append(f"| {rows.shape[1]}x{h} relu_l1 | {speed.get('mkl', float('nan')):,.0f} | {speed.get('onednn', float('nan')):,.0f} "
                     f"| {chosen} | {speed[chosen] / best:.2f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fifth of the rows")
    ap.add_argument("--full", action="store_true", help="(accepted for make bench; no effect)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 1,000 synthetic 64-wide rows, 1 run (tests; figures mean nothing)")
    args = ap.parse_args()
    import sae_lens

    if args.smoke:
        print("(smoke run: every code path on tiny sizes; the figures below mean nothing)")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, sae-lens {sae_lens.__version__}; "
          f"1 thread each, batch {BATCH}, 1 epoch, lr {LR}")
    data = datasets(args.quick, args.smoke)
    print("\n| data : dict size, k | lfp relu_l1 (paper) rows/s, FVU @ L0 | lfp topk rows/s, FVU @ L0, dead | "
          "SAELens topk rows/s, FVU @ L0, dead | fvu_ratio | speed_ratio (CPU-time) |")
    print("|---|---|---|---|---|---|")
    worst_fvu, worst_speed, worst_cpu, load_diff = 0.0, float("inf"), float("inf"), 0.0
    for name, h, k in SMOKE_CASES if args.smoke else CASES:
        if name not in data:
            continue
        train, held = data[name]
        runs: dict[str, dict[str, float]] = {}
        for _ in range(1 if args.quick or args.smoke else 2):  # interleaved; best speed of each kept (same FVU: seeded)
            for label in ("relu", "topk", "peer"):
                if label == "peer":
                    r = run_saelens(train, held, h, k)
                elif label == "topk":
                    r = run_lfp(train, held, h, l1=0.0, architecture="topk", k=k)[0]
                else:
                    r = run_lfp(train, held, h, l1=L1)[0]
                best = runs.setdefault(label, r)
                best["rows_per_s"] = max(best["rows_per_s"], r["rows_per_s"])
                best["cpu_rows_per_s"] = max(best["cpu_rows_per_s"], r["cpu_rows_per_s"])
        relu, topk, peer = runs["relu"], runs["topk"], runs["peer"]
        _, sae = run_lfp(train[:2000], held, h, l1=0.0, architecture="topk", k=k)
        load_diff = max(load_diff, saelens_loads(sae, held))
        fvu_ratio, speed_ratio = topk["fvu"] / peer["fvu"], topk["rows_per_s"] / peer["rows_per_s"]
        cpu_ratio = topk["cpu_rows_per_s"] / peer["cpu_rows_per_s"]
        worst_fvu, worst_speed, worst_cpu = max(worst_fvu, fvu_ratio), min(worst_speed, speed_ratio), min(worst_cpu, cpu_ratio)
        print(f"| {name} {train.shape[1]} : {h}, k={k} | {relu['rows_per_s']:,.0f}, {relu['fvu']:.4f} @ {relu['l0']:.1f} "
              f"| {topk['rows_per_s']:,.0f}, {topk['fvu']:.4f} @ {topk['l0']:.1f}, {topk['dead']:.0%} "
              f"| {peer['rows_per_s']:,.0f}, {peer['fvu']:.4f} @ {peer['l0']:.1f}, {peer['dead']:.0%} "
              f"| {fvu_ratio:.2f} | {speed_ratio:.1f} ({cpu_ratio:.1f}) |", flush=True)
    print(f"\nworst fvu_ratio {worst_fvu:.2f} (goal <= 1 +- noise); worst speed_ratio {worst_speed:.1f} wall-clock, "
          f"{worst_cpu:.1f} from thread CPU time (goal >= 3)")
    print(f"SAELens loads lfp's topk directories: max |code difference| {load_diff:.2e}")
    print("\n| GEMM backend | mkl rows/s | onednn rows/s | chosen | chosen / best |\n|---|---|---|---|---|")
    for line in backend_check(data["synthetic"][0], args.quick, args.smoke):
        print(line, flush=True)
    print(f"(choice cache: {gemm.gemm_cache_file()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
