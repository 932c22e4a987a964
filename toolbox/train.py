"""The training loop: build every part, step the scheme, validate, log, checkpoint.

It knows nothing about GANs (what one step does is the registered scheme's business), and
little about bookkeeping: the run folder, metrics and checkpoints are ``toolbox.run_folder``'s,
scoring and the final report ``toolbox.report``'s.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from toolbox.checkpoint import rank_rng
from toolbox.console import make_console
from toolbox.data.datasets import build_data
from toolbox.data.sampling import batch_indices, make_loader
from toolbox.distributed import barrier, broadcast_from_main, init_distributed, mean_over_ranks, run_on_main, unwrap
from toolbox.ema import WeightAverage
from toolbox.errors import RecipeError, ToolboxError
from toolbox.figures import write_grid
from toolbox.latent_inversion import inversion_denoiser, is_latent_generator
from toolbox.lr_schedule import LearningRateSchedule
from toolbox.parts import Parts
from toolbox.pretrained import initial_weights
from toolbox.recipe import Recipe
from toolbox.registry import Registry
from toolbox.report import evaluate_held_out, final_report, mean
from toolbox.rng import restore_rng, seed_everything
from toolbox.run_folder import RunFolder, check_run_dir, environment


def build_scheme(recipe: Recipe, registry: Registry, device: torch.device, amp=False,
                 channels_last: bool = False, find_unused_parameters: bool = False):
    """The recipe's scheme with every part it asked for built and checked on a patch."""
    parts = Parts(recipe.data, recipe.source, device, registry, amp=amp, channels_last=channels_last,
                  find_unused_parameters=find_unused_parameters)
    scheme = registry.build("schemes", recipe["scheme"], recipe.source, "scheme", parts=parts)
    if scheme.generator is None:
        raise ToolboxError(f"scheme '{recipe['scheme']['type']}' did not set its generator")
    parts.check_networks()
    if recipe.get("inversion") is not None and not is_latent_generator(scheme.generator):
        raise RecipeError(f"inversion: settings for denoising by latent search, and generator "
                          f"'{recipe['generator']['type']}' takes images, not latent vectors; remove the "
                          "section", recipe.source, "inversion")
    return parts, scheme


class Training:
    """One run of the loop; ``run_training`` is its entry point."""

    def __init__(self, recipe: Recipe, registry: Registry, out: str | None, console, resume: Path | None):
        config = self.config = recipe.data
        self.train_cfg = config["train"]
        self.ranks, self.device = init_distributed(self.train_cfg["device"])
        self.console = (console or make_console()) if self.ranks.is_main else make_console(quiet=True)
        self.source = recipe.source
        last = None
        if resume is None:
            run_on_main(self.ranks, lambda: check_run_dir(out))
        else:
            last = RunFolder.last_checkpoint(resume)
        seed_everything(int(config["seed"]))
        # Everything is built and checked before the first batch.
        self.data = build_data(config, registry, recipe.source)
        if not self.data.held_out:
            raise ToolboxError(f"{recipe.source}: give data.val (held-out images) to validate on")
        self.parts, self.scheme = build_scheme(
            recipe, registry, self.device, amp=self.train_cfg["amp"], channels_last=self.train_cfg["channels_last"],
            find_unused_parameters=self.train_cfg["find_unused_parameters"])
        self.generator = unwrap(self.scheme.generator)  # validation runs on rank 0 alone, outside DDP
        if self.train_cfg["init_from"] and last is None:  # a resumed run has its own weights
            self.generator.load_state_dict(initial_weights(registry, config, self.train_cfg["init_from"],
                                                           f"{recipe.source}, key 'train.init_from'"))
        # train.ema: validation, the best checkpoint and inference use averaged weights.
        self.ema = WeightAverage(self.generator, float(self.train_cfg["ema"])) if self.train_cfg["ema"] else None
        self.lr_schedule = LearningRateSchedule(self.train_cfg["lr_schedule"], int(self.train_cfg["steps"]),
                                                recipe.source)
        self.start_step, self.best_psnr = 0, -float("inf")
        if last is None:
            info = {"seed": int(config["seed"]), "profile": recipe.profile, "parameters": self.parameter_counts(),
                    "world_size": self.ranks.world_size, **environment(self.device, registry.plugin_versions)}
            self.run = RunFolder(run_on_main(self.ranks, lambda: RunFolder.create(recipe, out, info, self.ranks)),
                                 self.ranks)
        else:
            self.run = RunFolder(Path(resume), self.ranks)
            self.resume_from(last)

    def parameter_counts(self) -> dict:
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.scheme.modules().items()}

    def resume_from(self, last: dict) -> None:
        self.scheme.load_state_dict(last["scheme"])
        if self.ema is not None:
            if "ema" not in last:
                raise ToolboxError("the run was trained without train.ema; resume it without it")
            self.ema.load_state_dict(last["ema"])
        self.start_step, self.best_psnr = int(last["step"]), float(last.get("best_psnr", -float("inf")))
        restore_rng(rank_rng(last, self.ranks.rank, self.ranks.world_size))
        if int(last.get("world_size", 1)) != self.ranks.world_size:
            self.console.print(f"[yellow]Note:[/] the run was trained with {last.get('world_size', 1)} "
                               f"process(es), now {self.ranks.world_size}: it continues, but the batches "
                               "differ from an uninterrupted run's")
        self.run.truncate_metrics(self.start_step)

    @property
    def network(self) -> torch.nn.Module:
        """The generator whose weights validation, the best checkpoint and inference use (the
        weight average, if any)."""
        return self.ema.network if self.ema is not None else self.generator

    @property
    def denoiser(self) -> torch.nn.Module:
        """What validation denoises with: the network, or for a latent generator a search of
        its latent space (toolbox.latent_inversion)."""
        return inversion_denoiser(self.network, self.config.get("inversion"))

    def validate(self, **kwargs):
        data_cfg = self.config["data"]
        return evaluate_held_out(self.denoiser, self.data.held_out, self.data.spatial_dims, data_cfg["patch_size"],
                                 data_cfg["normalize"], float(self.train_cfg["val_overlap"]), self.device,
                                 self.parts.amp_dtype, context=data_cfg.get("context_slices", 1),
                                 noise_level_map=data_cfg["noise_level_map"], noise_spec=data_cfg.get("noise"),
                                 **kwargs)

    def checkpoint(self, name: str, step: int, extra: dict | None = None) -> None:
        if self.ema is not None:
            extra = {**(extra or {}), "ema": self.ema.state_dict()}
        self.run.checkpoint(name, step, self.scheme, self.config, self.best_psnr, extra)

    def batches(self):
        """Every step's batches from the first step still to train (a pure function of the step)."""
        cfg = self.train_cfg
        per_step = int(getattr(self.scheme, "batches_per_step", 1))
        indices = batch_indices(int(cfg["batch_size"]), self.start_step * per_step, int(cfg["steps"]) * per_step,
                                self.ranks)
        loader = iter(make_loader(self.data.train, int(cfg["batch_size"]), indices, int(cfg["num_workers"]),
                                  int(self.config["seed"])))
        while True:
            yield [self.parts.to_device(next(loader)) for _ in range(per_step)]

    def step(self, batches, step: int) -> dict[str, torch.Tensor]:
        self.lr_schedule.apply(self.scheme.optimizers().values(), step)
        try:
            return self.scheme.train_step(batches, step)
        except RuntimeError as error:
            if "find_unused_parameters" in str(error):  # DDP: a parameter got no gradient
                raise ToolboxError(
                    f"step {step}: a network has parameters this step did not use; set "
                    "train.find_unused_parameters: true for multi-process training") from error
            raise

    def validation(self, step: int) -> None:
        """Score the held-out images (rank 0) and keep the best checkpoint."""
        improved = None
        if self.ranks.is_main:
            rows = self.validate(limit=self.train_cfg["val_max_images"])
            psnr, ssim = mean(rows, "psnr"), mean(rows, "ssim")
            self.run.log({"step": step, "split": "val", "psnr": psnr, "ssim": ssim})
            keep = self.train_cfg["best"] == "last" or psnr > self.best_psnr
            improved = {"val_psnr": psnr, "val_ssim": ssim} if keep else None
            samples = self.scheme.sample_grid(self.network)
            if samples is not None:
                write_grid(self.run.path / "figures" / f"samples_step{step:06d}.png", samples.numpy())
        improved = broadcast_from_main(improved)
        if improved is not None:
            self.best_psnr = improved["val_psnr"]
            self.checkpoint("best", step, improved)
        self.scheme.train(True)

    def train(self) -> dict | None:
        cfg, steps = self.train_cfg, int(self.train_cfg["steps"])
        if self.start_step >= steps:
            raise ToolboxError(f"{self.run.path}: already trained {self.start_step} of {steps} steps; "
                               "raise train.steps to train on")
        self.announce()
        log = LossLog(self.ranks)
        started = time.time()
        self.scheme.train(True)
        progress = self.progress_bar()
        with progress:
            task = progress.add_task("train", total=steps, losses="", completed=self.start_step)
            for step, batches in zip(range(self.start_step + 1, steps + 1), self.batches()):
                log.add(self.step(batches, step))
                if self.ema is not None:
                    self.ema.update(self.generator)
                last = step == steps
                if step % cfg["log_every"] == 0 or last:
                    terms = log.check(step)
                    self.run.log({"step": step, "split": "train", **terms, "seconds": round(time.time() - started, 2)})
                    progress.update(task, losses=log.summary())
                if step % cfg["val_every"] == 0 or last:
                    self.validation(step)
                if step % cfg["checkpoint_every"] == 0 or last:
                    log.check(step)  # never write diverged weights
                    self.checkpoint("last", step)
                progress.advance(task)
        if not self.ranks.is_main:
            barrier()  # rank 0 writes the final report
            return None
        try:
            return final_report(self.run.path, self.config, self.data, self.network, self.validate, started,
                                self.console)
        finally:
            barrier()

    def announce(self) -> None:
        world = f"  ranks={self.ranks.world_size}" if self.ranks.distributed else ""
        self.console.print(
            f"[bold]toolbox run[/] {self.source} -> {self.run.path}  device={self.device}{world}  "
            + "  ".join(f"{k}={v / 1e6:.2f}M params" for k, v in self.parameter_counts().items()))
        if self.start_step == 0:
            if self.ranks.is_main:
                baseline = self.validate(limit=self.train_cfg["val_max_images"])
                self.run.log({"step": 0, "split": "val", "psnr_noisy": mean(baseline, "psnr_noisy"),
                              "ssim_noisy": mean(baseline, "ssim_noisy")})
            barrier()
        else:
            self.console.print(f"Resuming {self.run.path} after step {self.start_step}")

    def progress_bar(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(
            TextColumn("[bold blue]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
            console=self.console, transient=False, disable=not self.ranks.is_main)


class LossLog:
    """The scheme's loss terms: kept as tensors between logs (no device sync every step),
    averaged over ranks and checked for divergence when they are logged."""

    def __init__(self, ranks):
        self.ranks = ranks
        self.latest: dict[str, torch.Tensor] = {}
        self.running: dict[str, torch.Tensor] = {}

    def add(self, terms: dict) -> None:
        self.latest = {k: torch.as_tensor(v).detach().double() for k, v in terms.items()}
        for key, value in self.latest.items():
            self.running[key] = value if key not in self.running else 0.9 * self.running[key] + 0.1 * value

    def check(self, step: int) -> dict[str, float]:
        """This step's terms as numbers (the same on every rank); an error if any term,
        now or since the last check, is not finite (the running average keeps a NaN)."""
        terms = mean_over_ranks({k: float(v) for k, v in self.latest.items()})
        running = mean_over_ranks({k: float(v) for k, v in self.running.items()})
        for key in terms:
            if not (math.isfinite(terms[key]) and math.isfinite(running[key])):
                raise ToolboxError(f"training diverged at step {step}: {key} = {terms[key]}; lower the "
                                   "learning rate or check the data normalisation")
        return terms

    def summary(self) -> str:
        return " ".join(f"{k}={float(v):.4g}" for k, v in self.running.items())


def run_training(recipe: Recipe, registry: Registry, out: str | None = None, console=None,
                 resume: Path | None = None) -> tuple[Path, dict | None]:
    """Train what ``recipe`` describes with parts from ``registry``; the run folder is created
    only once all parts are built.

    ``resume``: a run folder to continue from its last complete checkpoint (models,
    optimizers, scaler, step, best score, every random state; the data sampler is a pure
    function of the step), so the result equals an uninterrupted run's.

    Under ``torchrun`` every rank trains on its share of each batch (DDP averages the
    gradients); rank 0 alone validates, logs and writes the run folder, and alone returns
    the report (the others return ``None``).
    """
    training = Training(recipe, registry, out, console, resume)
    return training.run.path, training.train()
